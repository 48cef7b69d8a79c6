"""The IPCV scaling study: models, measurement, and (in later steps) sweeps, results, analysis."""
