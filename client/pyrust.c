/* The native pyrust client (placeholder: hands everything to the Python client). */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include "pyrust_build.h"
#include "settings.c"

int main(int argc, char **argv)
{
    (void)argc;
    argv[0] = (char *)PYRUST_PYTHON_CLIENT;
    execv(PYRUST_PYTHON_CLIENT, argv);
    fprintf(stderr, "pyrust: cannot run the Python client %s (%s)\n", PYRUST_PYTHON_CLIENT,
            strerror(errno));
    return 125;
}
