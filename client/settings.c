/* settings.c: the user's settings, read as the Python client reads them.
 * (Interim version: any configuration file or [tool.pyrust] table is handed off.)
 * Included by pyrust.c. */
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

struct strlist { char **items; size_t count; };
enum { SETTINGS_OK = 0, SETTINGS_ABSENT = 1, SETTINGS_HAND_OFF = -1 };

struct user_config {
    char *socket;
    char *python;
    struct strlist preload;
    int echo;
    int autostart;
};

struct project {
    char *path;
    char *python;
    int preload_set;
    struct strlist preload;
    int echo;
};

static int read_config(const char *path, int explicit, struct user_config *config)
{
    struct stat st;
    memset(config, 0, sizeof *config);
    config->echo = config->autostart = 1;
    if (!explicit && stat(path, &st) != 0)
        return SETTINGS_ABSENT;
    return SETTINGS_HAND_OFF;
}

static int find_project(const char *cwd, struct project *project)
{
    memset(project, 0, sizeof *project);
    project->echo = -1;
    if (cwd == NULL)
        return SETTINGS_OK;
    size_t n = strlen(cwd);
    char *dir = malloc(n + 32);
    if (dir == NULL)
        return SETTINGS_HAND_OFF;
    memcpy(dir, cwd, n + 1);
    for (;;) {
        char *candidate = malloc(strlen(dir) + 32);
        struct stat st;
        if (candidate == NULL)
            break;
        sprintf(candidate, "%s%spyproject.toml", dir, strcmp(dir, "/") ? "/" : "");
        int found = stat(candidate, &st) == 0 && S_ISREG(st.st_mode);
        int marked = 0;
        if (found) {
            FILE *f = fopen(candidate, "rb");
            char chunk[8192];
            size_t got;
            marked = f == NULL;
            while (f && (got = fread(chunk, 1, sizeof chunk - 1, f)) > 0) {
                chunk[got] = 0;
                if (memchr(chunk, 0, got) || strstr(chunk, "[tool.pyrust]") || got > 4000)
                    marked = 1;  /* interim: anything unusual goes to the Python client */
            }
            if (f)
                fclose(f);
        }
        free(candidate);
        if (found) {
            free(dir);
            return marked ? SETTINGS_HAND_OFF : SETTINGS_OK;
        }
        char *slash = strrchr(dir, '/');
        if (slash == NULL || slash == dir) {
            if (strcmp(dir, "/") == 0)
                break;
            strcpy(dir, "/");
            continue;
        }
        *slash = 0;
    }
    free(dir);
    return SETTINGS_OK;
}

static char *expand_user(const char *path)
{
    if (path[0] != '~' || (path[1] && path[1] != '/'))
        return strdup(path);
    const char *home = getenv("HOME");
    if (home == NULL) {
        struct passwd *pw = getpwuid(getuid());
        home = pw ? pw->pw_dir : NULL;
    }
    if (home == NULL)
        return strdup(path);
    size_t n = strlen(home);
    while (n > 1 && home[n - 1] == '/')
        n--;
    char *out = malloc(n + strlen(path) + 1);
    if (out) {
        memcpy(out, home, n);
        strcpy(out + n, path + 1);
    }
    return out;
}
