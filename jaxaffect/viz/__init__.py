"""Figures from trained workdirs (attention maps, ...). Matplotlib with the Agg backend: no display
needed, so they run on headless training machines."""
