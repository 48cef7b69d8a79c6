"""The sweep: profiles (``spec``), the grid of cells (``grid``), the cell executor
(``executor``) and the row layout (``rows``), the driver over Ray or in process (``driver``),
the results store (``store``) and W&B logging (``tracking``).

``pipeline.sweep.driver`` imports Ray; the other modules do not.
"""
