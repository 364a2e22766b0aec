/* settings.c: the user's settings, read as the Python client reads them
 * (placeholder: filled in by the settings reader). Included by pyrust.c. */
