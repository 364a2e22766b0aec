/* The native pyrust client (placeholder). */
#define _GNU_SOURCE
#include <stdio.h>
#include "pyrust_build.h"
#include "settings.c"

int main(void)
{
    puts(PYRUST_VERSION);
    return 0;
}
