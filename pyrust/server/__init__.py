"""pyrust's server: the service, its templates, their supervisors and workers."""
