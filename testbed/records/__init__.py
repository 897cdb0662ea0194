"""Records: per-connection metrics from the apps' reports and the controller's typed events,
and the run directory they are written to and read from."""
