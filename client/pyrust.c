/*
 * The native `pyrust` command: the run path of the Python client (pyrust/cli.py,
 * pyrust/client.py) in C, so that a run costs a process start and one socket
 * round trip, not an interpreter's start-up.
 *
 * It does what almost every call does: read python's command line
 * (pyrust/pyoptions.py), choose the run's environment (pyrust/project.py, the
 * user configuration), check that the socket and the server are the user's own
 * (pyrust/trust.py), send the run with the terminal's fds (docs/protocol.md),
 * forward Ctrl-C, and end as the program ended.  Everything else is handed to
 * the Python client with the same argv, the way chg hands off to hg: pyrust's
 * subcommands and flags, --help, starting a service when none answers, and
 * anything this code cannot vouch for (a configuration it does not read, a
 * usage error, an option neither pyrust nor python knows).  What pyrust leaves
 * to python (-V, -x, --help-env, a value python checks) execs the environment's
 * python itself.  PYRUST_NO_NATIVE=1 hands off everything.
 *
 * The build (pyrust/native.py) generates pyrust_build.h: the Python client's
 * launcher, the default interpreter, and the settings' checks.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <locale.h>
#include <pwd.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>

#include "pyrust_build.h"
#include "settings.c"

extern char **environ;

/* The wire (field tags F_*, statuses ST_*, op codes), pyrust's own options, flags and
 * subcommands, python's option letters, the retry counts and EXIT_SERVICE come from
 * pyrust_build.h, which pyrust/native.py renders from the Python modules. */
static const char *const STATUS_NAMES[] = {PYRUST_STATUS_NAMES};

/* --- memory and buffers ---------------------------------------------------------- */

static void out_of_memory(void)
{
    fputs("pyrust: out of memory\n", stderr);
    exit(EXIT_SERVICE);
}

static void *xrealloc(void *p, size_t size)
{
    p = realloc(p, size ? size : 1);
    if (p == NULL)
        out_of_memory();
    return p;
}

static char *xstrdup(const char *s)
{
    size_t n = strlen(s) + 1;
    return memcpy(xrealloc(NULL, n), s, n);
}

/* Return the concatenation of the NULL-terminated list of strings. */
static char *concat(const char *first, ...)
{
    va_list ap;
    size_t size = 1;
    const char *s;
    va_start(ap, first);
    for (s = first; s != NULL; s = va_arg(ap, const char *))
        size += strlen(s);
    va_end(ap);
    char *out = xrealloc(NULL, size), *end = out;
    va_start(ap, first);
    for (s = first; s != NULL; s = va_arg(ap, const char *))
        end = stpcpy(end, s);
    va_end(ap);
    return out;
}

struct buf { unsigned char *data; size_t len, cap; };

static void buf_add(struct buf *b, const void *data, size_t n)
{
    if (b->len + n > b->cap) {
        b->cap = (b->len + n) * 2 + 256;
        b->data = xrealloc(b->data, b->cap);
    }
    if (n)
        memcpy(b->data + b->len, data, n);
    b->len += n;
}

static void put_u32(unsigned char *p, uint32_t v)
{
    p[0] = v >> 24; p[1] = v >> 16; p[2] = v >> 8; p[3] = v;
}

static uint32_t get_u32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* Append one extended-request field: [u8 tag][u32 length][value]. */
static void field(struct buf *b, int tag, const void *value, size_t n)
{
    unsigned char head[5];
    head[0] = (unsigned char)tag;
    put_u32(head + 1, (uint32_t)n);
    buf_add(b, head, 5);
    buf_add(b, value, n);
}

static void field_str(struct buf *b, int tag, const char *value)
{
    field(b, tag, value, strlen(value));
}

static void strlist_add(struct strlist *l, char *item)
{
    l->items = xrealloc(l->items, (l->count + 1) * sizeof *l->items);
    l->items[l->count++] = item;
}

static int strlist_has(const struct strlist *l, const char *item)
{
    for (size_t i = 0; i < l->count; i++)
        if (strcmp(l->items[i], item) == 0)
            return 1;
    return 0;
}

/* --- hand-offs -------------------------------------------------------------------- */

static char **g_argv;  /* the command line, for a hand-off */

/* Replace this process by the Python client with the same argv. */
static void hand_off(void)
{
    g_argv[0] = (char *)PYRUST_PYTHON_CLIENT;
    execv(PYRUST_PYTHON_CLIENT, g_argv);
    fprintf(stderr, "pyrust: cannot run the Python client %s (%s)\n", PYRUST_PYTHON_CLIENT,
            strerror(errno));
    exit(EXIT_SERVICE);
}

/* Hand off after the program was read from stdin: the Python client reads it
 * again from an unlinked file that holds it. */
static void hand_off_with_stdin(const struct buf *program)
{
    const char *dir = getenv("TMPDIR");
    char *name = concat(dir && *dir == '/' ? dir : "/tmp", "/pyrust-stdin-XXXXXX", NULL);
    int fd = mkstemp(name);
    size_t done = 0;
    if (fd >= 0) {
        unlink(name);
        while (done < program->len) {
            ssize_t n = write(fd, program->data + done, program->len - done);
            if (n < 0 && errno == EINTR)
                continue;
            if (n <= 0)
                break;
            done += (size_t)n;
        }
    }
    if (fd < 0 || done < program->len || lseek(fd, 0, SEEK_SET) != 0 || dup2(fd, 0) < 0) {
        fprintf(stderr, "pyrust: cannot keep the program read from stdin for the Python "
                "client (%s)\n", strerror(errno));
        exit(EXIT_SERVICE);
    }
    close(fd);
    free(name);
    hand_off();
}

/* --- python's command line (pyrust/pyoptions.py) ---------------------------------- */

static const char *const OWN_OPTIONS[] = {PYRUST_OWN_OPTIONS};
static const char *const OWN_FLAGS[] = {PYRUST_OWN_FLAGS};
static const char *const SUBCOMMANDS[] = {PYRUST_SUBCOMMANDS};

struct line {
    const char *own[OWN_COUNT];     /* OWN_OPTIONS' values */
    int own_given[OWN_COUNT];
    int own_missing;        /* an own option without its value */
    int flag, help, fallback, stop;
    int unknown;            /* an option neither pyrust nor python knows: hand off */
    char form;              /* 'c', 'm', 'f', '-', or 0: no program */
    const char *source;
    char **args;            /* after the program */
    int nargs, noptions;
    char **python_args;     /* without pyrust's own options: for exec */
    int npython;
    struct strlist startup, pyopt, xoptions;
    int counts[128];
    const char *pyc_mode;
};

static int in_set(int c, const char *set)
{
    return c != 0 && strchr(set, c) != NULL;
}

static void python_arg(struct line *l, char *arg)
{
    l->python_args[l->npython++] = arg;
}

static void set_program(struct line *l, char form, char *source, char **rest, int nrest,
                        int separate)
{
    l->form = form;
    l->source = source;
    l->args = rest;
    l->nargs = nrest;
    if (separate)
        python_arg(l, source);
    for (int i = 0; i < nrest; i++)
        python_arg(l, rest[i]);
}

/* Whether `value` is plain decimal digits for a number from low to high. */
static int number_in(const char *value, long long low, long long high)
{
    size_t n = value ? strlen(value) : 0;
    if (n == 0 || n > 10 || strspn(value, "0123456789") != n)
        return 0;
    long long v = strtoll(value, NULL, 10);
    return low <= v && v <= high;
}

/* Whether every python 3.9-3.13 starts with -X value (pyoptions._X_CHECKS). */
static int x_option_ok(const char *value)
{
    const char *eq = strchr(value, '=');
    size_t n = eq ? (size_t)(eq - value) : strlen(value);
    const char *v = eq ? eq + 1 : NULL;
#define NAMED(s) (n == strlen(s) && strncmp(value, s, n) == 0)
    if (NAMED("utf8"))
        return v == NULL || strcmp(v, "0") == 0 || strcmp(v, "1") == 0;
    if (NAMED("int_max_str_digits"))
        return number_in(v, 0, 0) || number_in(v, 640, 2147483647LL);
    if (NAMED("tracemalloc"))
        return v == NULL || number_in(v, 0, 65535);
    if (NAMED("frozen_modules"))
        return v != NULL && (strcmp(v, "on") == 0 || strcmp(v, "off") == 0);
    if (NAMED("cpu_count"))
        return v != NULL && (strcmp(v, "default") == 0 || number_in(v, 1, 2147483647LL));
    if (NAMED("gil"))
        return v != NULL && strcmp(v, "1") == 0;
#undef NAMED
    return 1;
}

/* Record the value-less short option `letter`; return 0 if parsing stops. */
static int short_flag(struct line *l, int letter)
{
    if (in_set(letter, COUNTED) || in_set(letter, ORDER)) {
        l->counts[letter]++;
    } else if (in_set(letter, PER_RUN)) {
        char opt[3] = {'-', (char)letter, 0};
        if (!strlist_has(&l->pyopt, opt))
            strlist_add(&l->pyopt, xstrdup(opt));
    } else if (in_set(letter, HELP)) {
        l->help = 1;
        return 0;
    } else if (in_set(letter, DEFERRED_FALLBACK)) {
        l->fallback = 1;
    } else if (!in_set(letter, IGNORED)) {
        l->fallback = l->stop = l->unknown = 1;  /* python's own error */
        return 0;
    }
    return 1;
}

/* Parse the group of short options argv[i]; return the next index. */
static int short_options(struct line *l, char **argv, int argc, int i)
{
    char *arg = argv[i];
    for (size_t j = 1; arg[j]; j++) {
        int letter = (unsigned char)arg[j];
        if (!in_set(letter, WITH_VALUE)) {
            if (!short_flag(l, letter))
                break;
            continue;
        }
        int separate = arg[j + 1] == 0;
        if (separate && i + 1 == argc) {
            l->fallback = l->stop = 1;  /* "-c needs an argument" */
            return i + 1;
        }
        char *value = separate ? argv[i + 1] : arg + j + 1;
        int following = separate ? i + 2 : i + 1;
        if (letter == 'c' || letter == 'm') {
            set_program(l, (char)letter, value, argv + following, argc - following, separate);
            return following;
        }
        if (separate) {
            l->noptions++;
            python_arg(l, value);
        }
        char *spelled = concat(letter == 'W' ? "-W" : "-X", value, NULL);
        if (letter == 'W')
            strlist_add(&l->pyopt, spelled);
        else if (!x_option_ok(value) || strlist_has(&l->xoptions, spelled)) {
            l->fallback |= !x_option_ok(value);
            free(spelled);
        } else
            strlist_add(&l->xoptions, spelled);
        return following;
    }
    return i + 1;
}

/* Parse the long option argv[i]; return the next index. */
static int long_option(struct line *l, char **argv, int argc, int i)
{
    const char *arg = argv[i];
    if (strcmp(arg, "--help") == 0) {
        l->help = 1;
    } else if (strcmp(arg, "--version") == 0) {
        l->fallback = 1;
    } else if (strcmp(arg, "--check-hash-based-pycs") == 0) {
        const char *mode = i + 1 < argc ? argv[i + 1] : "";
        if (strcmp(mode, "default") == 0 || strcmp(mode, "always") == 0 ||
            strcmp(mode, "never") == 0) {
            l->pyc_mode = mode;
            l->noptions++;
            python_arg(l, argv[i + 1]);
            return i + 2;
        }
        l->fallback = l->stop = 1;
    } else {
        /* python's --help-env and the like, or an option nobody knows */
        l->fallback = l->stop = 1;
        l->unknown = strncmp(arg, "--help-", 7) != 0;
    }
    return i + 1;
}

/* Record pyrust's own option at argv[i] (index k of OWN_OPTIONS); return the next index. */
static int own_option(struct line *l, char **argv, int argc, int i, int k)
{
    const char *arg = argv[i];
    size_t n = strlen(OWN_OPTIONS[k]);
    l->own_given[k] = 1;
    if (arg[n] == '=') {
        l->own[k] = arg + n + 1;
        return i + 1;
    }
    l->own[k] = i + 1 < argc ? argv[i + 1] : NULL;
    l->own_missing |= l->own[k] == NULL;
    return i + 2;
}

static int own_option_index(const char *arg)
{
    if (strncmp(arg, "--", 2) != 0)
        return -1;
    for (int k = 0; k < OWN_COUNT; k++) {
        size_t n = strlen(OWN_OPTIONS[k]);
        if (strncmp(arg, OWN_OPTIONS[k], n) == 0 && (arg[n] == 0 || arg[n] == '='))
            return k;
    }
    return -1;
}

/* Spell the start-up options canonically (pyoptions._finish). */
static void finish_line(struct line *l)
{
    if (l->counts['I'])
        l->counts['E'] = l->counts['s'] = 0;  /* -I implies -E and -s */
    for (const char *p = ORDER; *p; p++) {
        int n = l->counts[(unsigned char)*p];
        if (!n)
            continue;
        if (!in_set(*p, COUNTED))
            n = 1;
        char *opt = xrealloc(NULL, (size_t)n + 2);
        opt[0] = '-';
        memset(opt + 1, *p, (size_t)n);
        opt[n + 1] = 0;
        strlist_add(&l->startup, opt);
    }
    for (size_t i = 0; i < l->xoptions.count; i++)
        strlist_add(&l->startup, l->xoptions.items[i]);
    if (l->pyc_mode)
        strlist_add(&l->startup, concat("--check-hash-based-pycs=", l->pyc_mode, NULL));
}

/* Parse argv (without the command's name) as pyoptions.parse does. */
static void parse_line(struct line *l, char **argv, int argc)
{
    int i = 0;
    memset(l, 0, sizeof *l);
    l->python_args = xrealloc(NULL, ((size_t)argc + 2) * sizeof *l->python_args);
    while (i < argc && l->form == 0) {
        char *arg = argv[i];
        int k = own_option_index(arg);
        if (k >= 0) {
            i = own_option(l, argv, argc, i, k);
            continue;
        }
        for (size_t f = 0; f < sizeof OWN_FLAGS / sizeof *OWN_FLAGS; f++)
            if (strcmp(arg, OWN_FLAGS[f]) == 0)
                l->flag = 1;
        if (l->flag)
            return;
        if (strcmp(arg, "-") == 0 || arg[0] != '-') {
            set_program(l, arg[0] == '-' ? '-' : 'f', arg, argv + i + 1, argc - i - 1, 1);
            break;
        }
        l->noptions++;
        python_arg(l, arg);
        if (strcmp(arg, "--") == 0) {
            if (i + 1 < argc)
                set_program(l, strcmp(argv[i + 1], "-") == 0 ? '-' : 'f', argv[i + 1],
                            argv + i + 2, argc - i - 2, 1);
            break;
        }
        i = arg[1] == '-' ? long_option(l, argv, argc, i) : short_options(l, argv, argc, i);
        if (l->help || l->stop) {
            while (i < argc)
                python_arg(l, argv[i++]);
            break;
        }
    }
    finish_line(l);
}

/* --- paths (posixpath) -------------------------------------------------------------- */

static char *cwd_or_null(void)
{
    size_t size = 256;
    char *buf = NULL;
    for (;;) {
        buf = xrealloc(buf, size);
        if (getcwd(buf, size) != NULL)
            return buf;
        if (errno != ERANGE) {
            free(buf);
            return NULL;
        }
        size *= 2;
    }
}

/* An allocation of settings.c, which says NULL when out of memory. */
static char *must(char *p)
{
    if (p == NULL)
        out_of_memory();
    return p;
}

/* os.path.join(a, b). */
static char *path_join(const char *a, const char *b)
{
    return b[0] == '/' ? xstrdup(b) : must(settings_path_join(a, b));
}

/* os.path.abspath(os.path.expanduser(value)); NULL where that fails (a relative path
 * and no working directory). */
static char *absolute(const char *value, const char *cwd)
{
    char *expanded = must(expand_user(value)), *joined, *out;
    if (expanded[0] != '/' && cwd == NULL) {
        free(expanded);
        return NULL;
    }
    joined = path_join(cwd ? cwd : "/", expanded);
    out = must(settings_normpath(joined));
    free(joined);
    free(expanded);
    return out;
}

/* project.interpreter_path: `value` against directory `base`; a directory means its
 * bin/python. */
static char *resolve_interpreter(const char *value, const char *base)
{
    return must(interpreter_path(value, base));
}

/* paths._xdg_dir: $variable if absolute, else ~/fallback. */
static char *xdg_dir(const char *variable, const char *fallback)
{
    const char *value = getenv(variable);
    if (value && value[0] == '/')
        return xstrdup(value);
    char *home = must(expand_user("~")), *out;
    out = path_join(home, fallback);
    free(home);
    return out;
}

/* paths.default_socket_path. */
static char *default_socket_path(void)
{
    const char *runtime = getenv("XDG_RUNTIME_DIR"), *tmpdir = getenv("TMPDIR");
    char uid[32], *dir, *out;
    if (runtime && runtime[0] == '/') {
        dir = path_join(runtime, "pyrust");
        out = path_join(dir, "pyrust.sock");
        free(dir);
        return out;
    }
#ifdef __APPLE__
    if (tmpdir && tmpdir[0] == '/')
        return path_join(tmpdir, "pyrust.sock");
#endif
    snprintf(uid, sizeof uid, "pyrust-%u", (unsigned)getuid());
    dir = path_join(tmpdir && tmpdir[0] == '/' ? tmpdir : "/tmp", uid);
    out = path_join(dir, "pyrust.sock");
    free(dir);
    return out;
}

/* --- the run's settings and environment --------------------------------------------- */

struct run {
    struct line line;
    char *cwd;              /* NULL: the working directory is gone */
    char *own[OWN_COUNT];   /* --socket, --config, --python made absolute */
    struct user_config config;
    int has_config;
    struct project project;
    char *project_root;     /* the directory of project.path */
    char *socket;           /* the service's main socket */
    char *python;           /* the environment: */
    struct strlist preload; /* (borrowed from the config or the project) */
    const char *root;
    int echo;
    struct buf env_fields;  /* the environment's fields: its key */
};

/* Read the user configuration as cli.load_settings does; hand off what it cannot. */
static void load_settings(struct run *r)
{
    char *path = r->own[OWN_CONFIG];
    int explicit = path != NULL;
    struct stat st;
    if (!explicit) {
        char *dir = xdg_dir("XDG_CONFIG_HOME", ".config"), *sub = path_join(dir, "pyrust");
        path = path_join(sub, "config.toml");
        free(sub);
        free(dir);
    }
    if (explicit || stat(path, &st) == 0) {
        int got = read_config(path, explicit, &r->config);
        if (got == SETTINGS_HAND_OFF)
            hand_off();
        r->has_config = got == SETTINGS_OK;
    }
    if (!explicit)
        free(path);
    const char *from_env = getenv("PYRUST_SOCKET");
    const char *chosen = r->own[OWN_SOCKET] ? r->own[OWN_SOCKET] : from_env && *from_env ? from_env
        : r->has_config && r->config.socket && *r->config.socket ? r->config.socket : NULL;
    r->socket = chosen ? absolute(chosen, r->cwd) : default_socket_path();
    if (r->socket == NULL || strlen(r->socket) >= sizeof ((struct sockaddr_un *)0)->sun_path)
        hand_off();  /* the Python client says what is wrong with it */
}

/* project._interpreter: the first source that names the interpreter. */
static char *choose_python(struct run *r)
{
    const char *named = getenv("PYRUST_PYTHON"), *venv = getenv("VIRTUAL_ENV");
    if (r->own[OWN_PYTHON])
        return resolve_interpreter(r->own[OWN_PYTHON], "/");
    if (named && *named) {
        char *expanded = expand_user(named);
        int relative = expanded == NULL || expanded[0] != '/';
        free(expanded);
        if (relative && r->cwd == NULL)
            hand_off();  /* a ConfigError of the Python client */
        return resolve_interpreter(named, r->cwd ? r->cwd : "/");
    }
    if (venv && *venv) {
        char *joined = path_join(r->cwd ? r->cwd : "/", venv);
        char *dir = must(settings_normpath(joined));
        char *python = path_join(dir, "bin/python");
        free(joined);
        free(dir);
        return python;
    }
    if (r->project.path && r->project.python)
        return resolve_interpreter(r->project.python, r->project_root);
    if (r->has_config && r->config.python)
        return resolve_interpreter(r->config.python, "/");
    return xstrdup(PYRUST_DEFAULT_PYTHON);
}

/* The PYTHON* variables that each run applies (environment.PER_RUN_VARIABLES). */
static const char *const PER_RUN_VARIABLES[] = {
    "PYTHONPATH", "PYTHONWARNINGS", "PYTHONUNBUFFERED", "PYTHONIOENCODING",
    "PYTHONDONTWRITEBYTECODE", "PYTHONINSPECT", "PYTHONSTARTUP", "PYTHONBREAKPOINT",
    "PYTHON_COLORS", "PYTHON_HISTORY", "PYTHON_BASIC_REPL"};

/* Whether environ[i] is the first entry of its name (os.environ keeps the first). */
static int first_of_name(size_t i)
{
    const char *entry = environ[i], *eq = strchr(entry, '=');
    if (eq == NULL)
        return 0;
    for (size_t j = 0; j < i; j++)
        if (strncmp(environ[j], entry, (size_t)(eq - entry) + 1) == 0)
            return 0;
    return 1;
}

static int start_up_variable(const char *entry)
{
    const char *eq = strchr(entry, '=');
    if (strncmp(entry, "PYTHON", 6) != 0 || eq == NULL || eq[1] == 0)
        return 0;
    for (size_t k = 0; k < sizeof PER_RUN_VARIABLES / sizeof *PER_RUN_VARIABLES; k++) {
        size_t n = strlen(PER_RUN_VARIABLES[k]);
        if ((size_t)(eq - entry) == n && strncmp(entry, PER_RUN_VARIABLES[k], n) == 0)
            return 0;
    }
    for (const char *p = entry; p < eq; p++)
        if ((unsigned char)*p >= 0x80)
            hand_off();  /* sorted as python sorts str: leave that to python */
    return 1;
}

static int by_name(const void *a, const void *b)
{
    const char *x = *(const char *const *)a, *y = *(const char *const *)b;
    size_t nx = strcspn(x, "="), ny = strcspn(y, "=");
    int c = memcmp(x, y, nx < ny ? nx : ny);
    return c ? c : (nx > ny) - (nx < ny);
}

/* environment.startup_items: the options, then the start-up PYTHON* variables by name. */
static void startup_items(struct run *r, struct strlist *items)
{
    int ignore_environment = 0;
    for (size_t i = 0; i < r->line.startup.count; i++) {
        const char *opt = r->line.startup.items[i];
        ignore_environment |= strcmp(opt, "-E") == 0 || strcmp(opt, "-I") == 0;
        strlist_add(items, (char *)opt);
    }
    if (ignore_environment)
        return;
    size_t first = items->count;
    for (size_t i = 0; environ[i]; i++)
        if (start_up_variable(environ[i]) && first_of_name(i))
            strlist_add(items, environ[i]);
    if (items->count > first)
        qsort(items->items + first, items->count - first, sizeof *items->items, by_name);
}

/* cli.choose_environment: the interpreter, preloads, root, echo and the key's fields. */
static void choose_environment(struct run *r)
{
    struct strlist startup = {NULL, 0};
    if (find_project(r->cwd, &r->project) == SETTINGS_HAND_OFF)
        hand_off();
    if (r->project.path)
        r->project_root = must(settings_dirname(r->project.path));
    r->python = choose_python(r);
    r->root = "";
    if (r->project.path && r->project.preload_set) {
        r->preload = r->project.preload;
        if (r->preload.count)
            r->root = r->project_root;
    } else if (r->has_config) {
        r->preload = r->config.preload;
    }
    r->echo = r->has_config ? r->config.echo : 1;
    if (r->project.path && r->project.echo >= 0)
        r->echo = r->project.echo;
    field_str(&r->env_fields, F_PYTHON, r->python);
    for (size_t i = 0; i < r->preload.count; i++)
        field_str(&r->env_fields, F_PRELOAD, r->preload.items[i]);
    if (*r->root)
        field_str(&r->env_fields, F_ROOT, r->root);
    startup_items(r, &startup);
    for (size_t i = 0; i < startup.count; i++)
        field_str(&r->env_fields, F_STARTUP, startup.items[i]);
    free(startup.items);
}

/* environment.template_socket: DIR/env-<FNV-1a 64 of basename NUL key>.sock. */
static char *template_socket(const char *main_path, const struct buf *key)
{
    const char *slash = strrchr(main_path, '/');
    uint64_t h = 0xcbf29ce484222325ULL;
    const unsigned char *p;
    for (p = (const unsigned char *)slash + 1; ; p++) {
        h = (h ^ *p) * 0x100000001b3ULL;
        if (*p == 0)
            break;
    }
    for (size_t i = 0; i < key->len; i++)
        h = (h ^ key->data[i]) * 0x100000001b3ULL;
    size_t n = (size_t)(slash - main_path);
    char *out = xrealloc(NULL, n + 32);
    memcpy(out, main_path, n);
    snprintf(out + n, 32, "/env-%016llx.sock", (unsigned long long)h);
    return out;
}

/* --- failures ---------------------------------------------------------------------- */

static char g_error[2048];  /* why the last connection or request failed */

static void set_error(const char *format, ...)
{
    va_list ap;
    va_start(ap, format);
    vsnprintf(g_error, sizeof g_error, format, ap);
    va_end(ap);
}

/* Write `data` as Python writes bytes decoded as UTF-8 with errors="replace". */
static void write_replaced(FILE *out, const unsigned char *data, size_t n)
{
    size_t i = 0;
    while (i < n) {
        unsigned char c = data[i];
        size_t need = c < 0x80 ? 0 : c >= 0xc2 && c <= 0xdf ? 1 : c >= 0xe0 && c <= 0xef ? 2
            : c >= 0xf0 && c <= 0xf4 ? 3 : (size_t)-1;
        size_t ok = 0;
        if (need != (size_t)-1)
            for (ok = 0; ok < need && i + 1 + ok < n; ok++) {
                unsigned char d = data[i + 1 + ok];
                unsigned char lo = 0x80, hi = 0xbf;
                if (ok == 0 && c == 0xe0) lo = 0xa0;
                if (ok == 0 && c == 0xed) hi = 0x9f;
                if (ok == 0 && c == 0xf0) lo = 0x90;
                if (ok == 0 && c == 0xf4) hi = 0x8f;
                if (d < lo || d > hi)
                    break;
            }
        if (need != (size_t)-1 && ok == need) {
            fwrite(data + i, 1, need + 1, out);
            i += need + 1;
        } else {
            fputs("\xef\xbf\xbd", out);  /* one U+FFFD per maximal invalid subpart */
            i += need == (size_t)-1 ? 1 : ok + 1;
        }
    }
}

/* End with pyrust's own failure: "pyrust: <message>", exit status 125. */
static void fail(const char *message)
{
    fprintf(stderr, "pyrust: %s\n", message);
    exit(EXIT_SERVICE);
}

static void trim_right(const unsigned char *data, size_t *n)
{
    while (*n && (strchr(" \t\n\r\v\f\x1c\x1d\x1e\x1f", data[*n - 1]) != NULL))
        (*n)--;
}

/* cli._failed: report a request the service refused or failed; exit 125. */
static void failed(int status, const unsigned char *payload, size_t n)
{
    if (status >= 0 && status < (int)(sizeof STATUS_NAMES / sizeof *STATUS_NAMES))
        fprintf(stderr, "pyrust: %s: ", STATUS_NAMES[status]);
    else
        fprintf(stderr, "pyrust: status %d: ", status);
    trim_right(payload, &n);
    write_replaced(stderr, payload, n);
    fputc('\n', stderr);
    exit(EXIT_SERVICE);
}

/* --- who is at the other end (pyrust/trust.py) ----------------------------------------- */

static void describe_uid(char *out, size_t size, uid_t uid)
{
    struct passwd *pw = getpwuid(uid);
    if (pw && pw->pw_name)
        snprintf(out, size, "uid %u (%s)", (unsigned)uid, pw->pw_name);
    else
        snprintf(out, size, "uid %u", (unsigned)uid);
}

/* trust.directory_problem; 0 if `dir` may hold this user's socket, else -1 with the
 * reason in g_error; 1 (errno set) if it cannot be examined. */
static int directory_problem(const char *path, const char *dir)
{
    struct stat st;
    char who[300];
    if (lstat(dir, &st) != 0)
        return 1;
    if (S_ISLNK(st.st_mode))
        set_error("refusing %s: socket directory %s is a symbolic link; remove it (pyrust "
                  "creates the directory itself) or choose another --socket", path, dir);
    else if (!S_ISDIR(st.st_mode))
        set_error("refusing %s: socket directory %s is not a directory; move it away or "
                  "choose another --socket", path, dir);
    else if (st.st_uid != getuid()) {
        describe_uid(who, sizeof who, st.st_uid);
        set_error("refusing %s: socket directory %s belongs to %s, not to you (uid %u), so "
                  "someone else controls what listens there; choose another --socket (or set "
                  "$XDG_RUNTIME_DIR), and have an administrator remove it",
                  path, dir, who, (unsigned)getuid());
    } else if (st.st_mode & 077)
        set_error("refusing %s: socket directory %s is open to other users (mode %03o); "
                  "run: chmod 700 %s", path, dir, (unsigned)(st.st_mode & 07777), dir);
    else
        return 0;
    return -1;
}

static int peer_uid(int fd, uid_t *uid)
{
#ifdef SO_PEERCRED
    struct ucred cred;
    socklen_t size = sizeof cred;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &size) != 0)
        return -1;
    *uid = cred.uid;
    return 0;
#else
    gid_t gid;
    return getpeereid(fd, uid, &gid);
#endif
}

/* trust.server_problem; 0 if the server is this user's own, else -1 with g_error set. */
static int server_problem(const char *path, int fd)
{
    uid_t uid;
    char who[300];
    if (peer_uid(fd, &uid) != 0) {
        set_error("refusing %s: cannot tell who runs the server listening there (%s)", path,
                  strerror(errno));
        return -1;
    }
    if (uid == getuid())
        return 0;
    describe_uid(who, sizeof who, uid);
    set_error("refusing %s: the server listening there runs as %s, not as you (uid %u); "
              "nothing was sent to it. Stop that server, or choose another --socket",
              path, who, (unsigned)getuid());
    return -1;
}

/* --- one request (pyrust/client.py) ----------------------------------------------------- */

enum { DONE = 0, UNAVAILABLE, UNTRUSTED, NOT_DELIVERED, DIED };

#ifndef MSG_NOSIGNAL
#define MSG_NOSIGNAL 0  /* macOS: SO_NOSIGPIPE on the socket instead */
#endif

/* client.connect: a connection to `path`, verified as the user's own, in *fd. */
static int connect_to(const char *path, int *fd)
{
    struct sockaddr_un addr;
    char *dir = xstrdup(path), *slash = strrchr(dir, '/');
    int problem;
    if (slash == dir)
        slash[1] = 0;
    else
        *slash = 0;
    problem = directory_problem(path, dir);
    int saved = errno;
    free(dir);
    errno = saved;
    if (problem < 0)
        return UNTRUSTED;
    memset(&addr, 0, sizeof addr);
    addr.sun_family = AF_UNIX;
    if (strlen(path) >= sizeof addr.sun_path) {
        set_error("no pyrust service at %s (AF_UNIX path too long)", path);
        return UNAVAILABLE;
    }
    strcpy(addr.sun_path, path);
    *fd = problem ? -1 : socket(AF_UNIX, SOCK_STREAM, 0);
    if (*fd >= 0) {
        fcntl(*fd, F_SETFD, FD_CLOEXEC);
#ifdef SO_NOSIGPIPE
        int on = 1;
        setsockopt(*fd, SOL_SOCKET, SO_NOSIGPIPE, &on, sizeof on);
#endif
        if (connect(*fd, (struct sockaddr *)&addr, sizeof addr) == 0)
            return server_problem(path, *fd) ? (close(*fd), UNTRUSTED) : DONE;
        saved = errno;
        close(*fd);
        errno = saved;
    }
    set_error("no pyrust service at %s (%s)", path, strerror(errno));
    return UNAVAILABLE;
}

struct message { unsigned char header[4]; struct buf payload; int *fds; int nfds; };
struct reply { int status; unsigned char *payload; size_t len; };

/* Ctrl-C during a run becomes an INTERRUPT byte on the connection, once the whole
 * request is sent (never inside its frame); outside a run it ends the client as
 * KeyboardInterrupt ends the Python client. */
static volatile sig_atomic_t g_forward, g_sent, g_pending, g_sock = -1;

static void on_sigint(int signum)
{
    (void)signum;
    if (!g_forward)
        _exit(130);
    if (g_sent) {
        int saved = errno;
        (void)!send(g_sock, "\x03", 1, MSG_NOSIGNAL);
        errno = saved;
    } else {
        g_pending++;
    }
}

static int send_all(int fd, const unsigned char *data, size_t n)
{
    while (n) {
        ssize_t sent = send(fd, data, n, MSG_NOSIGNAL);
        if (sent < 0 && errno == EINTR)
            continue;
        if (sent < 0)
            return -1;
        data += sent;
        n -= (size_t)sent;
    }
    return 0;
}

/* Send the header, then the payload with the fds riding on it (docs/protocol.md). */
static int send_message(int fd, const struct message *m)
{
    if (send_all(fd, m->header, 4) != 0)
        return -1;
    if (m->nfds == 0)
        return send_all(fd, m->payload.data, m->payload.len);
    size_t space = CMSG_SPACE(sizeof(int) * (size_t)m->nfds);
    char *control = calloc(1, space);
    struct iovec iov = {m->payload.data, m->payload.len};
    struct msghdr msg;
    ssize_t sent;
    if (control == NULL)
        out_of_memory();
    memset(&msg, 0, sizeof msg);
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = space;
    struct cmsghdr *cmsg = CMSG_FIRSTHDR(&msg);
    cmsg->cmsg_level = SOL_SOCKET;
    cmsg->cmsg_type = SCM_RIGHTS;
    cmsg->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)m->nfds);
    memcpy(CMSG_DATA(cmsg), m->fds, sizeof(int) * (size_t)m->nfds);
    do
        sent = sendmsg(fd, &msg, MSG_NOSIGNAL);
    while (sent < 0 && errno == EINTR);
    free(control);
    if (sent < 0)
        return -1;
    return send_all(fd, m->payload.data + sent, m->payload.len - (size_t)sent);
}

/* Read exactly n bytes; 0, or -1 with errno (0: the peer closed first). */
static int read_exact(int fd, unsigned char *data, size_t n)
{
    while (n) {
        ssize_t got = recv(fd, data, n, 0);
        if (got < 0 && errno == EINTR)
            continue;
        if (got <= 0) {
            if (got == 0)
                errno = 0;
            return -1;
        }
        data += got;
        n -= (size_t)got;
    }
    return 0;
}

/* The connection ended before the reply was whole: at end-of-file (errno 0) the worker
 * died; an error of this end says nothing about the worker. */
static int worker_lost(void)
{
    if (errno != 0)
        set_error("lost the connection to the service (%s), so the code may have run part "
                  "way", strerror(errno));
    else
        set_error("the worker running the code died before it replied (it crashed, or was "
                  "killed for ignoring its time limit; the service log says which), so the "
                  "code may have run part way");
    return DIED;
}

/* protocol.read_response; DONE, or NOT_DELIVERED (a reset: the request was not read
 * whole), or DIED, with g_error set. */
static int read_reply(int fd, struct reply *reply)
{
    unsigned char head[5];
    memset(reply, 0, sizeof *reply);
    if (read_exact(fd, head, 5) == 0) {
        reply->status = head[0];
        reply->len = get_u32(head + 1);
        if (reply->len > PYRUST_MAX_MESSAGE_BYTES) {  /* before allocating room for it */
            set_error("the service's reply announced %zu bytes, more than a pyrust service "
                      "ever sends (%u), so the code may have run part way", reply->len,
                      PYRUST_MAX_MESSAGE_BYTES);
            return DIED;
        }
        reply->payload = xrealloc(NULL, reply->len);
        if (read_exact(fd, reply->payload, reply->len) == 0)
            return DONE;
        int saved = errno;
        free(reply->payload);
        reply->payload = NULL;
        errno = saved;
    }
    if (errno == ECONNRESET) {
        set_error("the service closed the connection without reading the request (%s)",
                  strerror(errno));
        return NOT_DELIVERED;
    }
    return worker_lost();
}

/* client.execute: send `m` on `fd`, read the reply. */
static int execute(int fd, const struct message *m, int forward, struct reply *reply)
{
    sigset_t block, old;
    g_sock = fd;
    g_sent = g_pending = 0;
    g_forward = forward;
    int rc = send_message(fd, m);
    if (rc != 0) {
        int saved = errno;
        if (saved == EPIPE || saved == ECONNRESET) {
            /* Refused before it was read whole (too large)? Its reply is queued here. */
            fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
            if (read_reply(fd, reply) == DONE)
                return DONE;
            set_error("the service closed the connection without reading the request (%s)",
                      strerror(saved));
            g_forward = 0;
            return NOT_DELIVERED;
        }
        g_forward = 0;
        return worker_lost();
    }
    sigemptyset(&block);
    sigaddset(&block, SIGINT);
    sigprocmask(SIG_BLOCK, &block, &old);
    g_sent = 1;
    for (; g_pending > 0; g_pending--)
        (void)!send(fd, "\x03", 1, MSG_NOSIGNAL);
    sigprocmask(SIG_SETMASK, &old, NULL);
    rc = read_reply(fd, reply);
    g_forward = 0;
    return rc;
}

/* client.request: send `m` on a new connection to `path`, again (at most
 * DELIVERY_ATTEMPTS times) while the server closes it unread.  Return DONE with the
 * reply, or UNAVAILABLE / UNTRUSTED when a connection fails (g_error says why).
 * A request that may have run and failed ends the client. */
static int request(const char *path, const struct message *m, int forward,
                   struct reply *reply)
{
    for (int attempt = 1; ; attempt++) {
        int fd = -1, rc = connect_to(path, &fd);
        if (rc != DONE)
            return rc;
        rc = execute(fd, m, forward, reply);
        close(fd);
        if (rc == DONE)
            return DONE;
        if (rc != NOT_DELIVERED || attempt == DELIVERY_ATTEMPTS)
            fail(g_error);
    }
}

/* --- the run (pyrust/cli.py run_program, client.run) ------------------------------------ */

static struct buf *g_program;  /* the program read from stdin, for a hand-off */

/* Hand off to the Python client, which starts a service (or says why it does not). */
static void hand_off_to_autostart(void)
{
    if (g_program)
        hand_off_with_stdin(g_program);
    hand_off();
}

/* client.ensure: the socket of the run's template, which the service starts if needed. */
static char *ensure(struct run *r)
{
    struct message m = {{0}, {NULL, 0, 0}, NULL, 0};
    struct reply reply;
    field(&m.payload, F_OP, OP_ENSURE, 1);
    buf_add(&m.payload, r->env_fields.data, r->env_fields.len);
    put_u32(m.header, EXTENDED_FLAG | (uint32_t)m.payload.len);
    int rc = request(r->socket, &m, 0, &reply);
    free(m.payload.data);
    if (rc == UNAVAILABLE)
        hand_off_to_autostart();
    if (rc != DONE)
        fail(g_error);
    size_t n = reply.len;
    trim_right(reply.payload, &n);
    if (reply.status != ST_OK) {
        if (n) {
            fputs("pyrust: ", stderr);
            write_replaced(stderr, reply.payload, n);
            fputc('\n', stderr);
            exit(EXIT_SERVICE);
        }
        if (reply.status <= ST_WRONG_ENVIRONMENT)
            set_error("the service cannot start the environment of %s (%s)", r->python,
                      STATUS_NAMES[reply.status]);
        else
            set_error("the service cannot start the environment of %s (%d)", r->python,
                      reply.status);
        fail(g_error);
    }
    char *path = xrealloc(NULL, reply.len + 1);
    memcpy(path, reply.payload, reply.len);
    path[reply.len] = 0;
    free(reply.payload);
    return path;
}

/* client.run: the template's own socket first; else (or on WRONG_TEMPLATE) the one the
 * service names, asked up to ENSURE_ATTEMPTS times. */
static void run(struct run *r, const struct message *m, struct reply *reply)
{
    char *path = template_socket(r->socket, &r->env_fields);
    int rc = request(path, m, 1, reply);
    free(path);
    if (rc == DONE && reply->status != ST_WRONG_ENVIRONMENT)
        return;
    for (int attempt = 0; attempt < ENSURE_ATTEMPTS; attempt++) {
        if (rc == DONE)
            free(reply->payload);
        path = ensure(r);
        rc = request(path, m, 1, reply);
        free(path);
        if (rc != DONE)
            fail(g_error);
        if (reply->status != ST_WRONG_ENVIRONMENT)
            return;
    }
}

/* PEP 538: where the LC_CTYPE locale is the legacy C locale, python sets LC_CTYPE to a
 * UTF-8 one in its own environment, which the program then sees: so does the client,
 * in the environment it sends.  Return that value, or NULL. */
static const char *coerced_ctype(struct run *r)
{
    static const char *const targets[] = {"C.UTF-8", "C.utf8", "UTF-8"};
    const char *all = getenv("LC_ALL"), *knob = getenv("PYTHONCOERCECLOCALE"), *current;
    int ignore_environment = r->line.counts['E'] || r->line.counts['I'];
    if ((all && *all) || (knob && strcmp(knob, "0") == 0 && !ignore_environment))
        return NULL;
    setlocale(LC_CTYPE, "");
    current = setlocale(LC_CTYPE, NULL);
    if (current == NULL || (strcmp(current, "C") != 0 && strcmp(current, "POSIX") != 0))
        return NULL;
    for (size_t i = 0; i < sizeof targets / sizeof *targets; i++)
        if (setlocale(LC_CTYPE, targets[i]) != NULL)
            return targets[i];
    return NULL;
}

/* The ENV fields: os.environb as the program would see it under python. */
static void environment_fields(struct run *r, struct buf *b)
{
    const char *ctype = coerced_ctype(r);
    int ctype_sent = 0;
    for (size_t i = 0; environ[i]; i++) {
        if (!first_of_name(i))
            continue;
        if (ctype && strncmp(environ[i], "LC_CTYPE=", 9) == 0) {
            char *entry = concat("LC_CTYPE=", ctype, NULL);
            field_str(b, F_ENV, entry);
            free(entry);
            ctype_sent = 1;
        } else {
            field_str(b, F_ENV, environ[i]);
        }
    }
    if (ctype && !ctype_sent) {
        char *entry = concat("LC_CTYPE=", ctype, NULL);
        field_str(b, F_ENV, entry);
        free(entry);
    }
}

static int by_number(const void *a, const void *b)
{
    int x = *(const int *)a, y = *(const int *)b;
    return (x > y) - (x < y);
}

/* cli._open_fds: this process's open fds above 2, which the program gets at the same
 * numbers; returns how many (at most MAX_EXTRA_FDS) are in `fds`. */
static int open_fds(int **fds)
{
    DIR *dir = opendir("/proc/self/fd");
    struct dirent *entry;
    int n = 0, cap = 16;
    *fds = xrealloc(NULL, (size_t)cap * sizeof **fds);
    if (dir == NULL)
        dir = opendir("/dev/fd");
    if (dir == NULL)
        return 0;
    int own = dirfd(dir);
    while ((entry = readdir(dir)) != NULL) {
        char *end;
        long fd = strtol(entry->d_name, &end, 10);
        if (*end || end == entry->d_name || fd <= 2 || fd == own || fd > INT_MAX ||
            fcntl((int)fd, F_GETFD) < 0)
            continue;
        if (n == cap)
            *fds = xrealloc(*fds, (size_t)(cap *= 2) * sizeof **fds);
        (*fds)[n++] = (int)fd;
    }
    closedir(dir);
    if (n)
        qsort(*fds, (size_t)n, sizeof **fds, by_number);
    return n < MAX_EXTRA_FDS ? n : MAX_EXTRA_FDS;
}

/* Read all of stdin (nothing if it is closed). */
static void read_stdin(struct buf *b)
{
    unsigned char chunk[65536];
    for (;;) {
        ssize_t got = read(0, chunk, sizeof chunk);
        if (got < 0 && errno == EINTR)
            continue;
        if (got <= 0)
            return;
        buf_add(b, chunk, (size_t)got);
    }
}

/* The fds the run takes along: 0-2, then this process's others (FD_NUMBERS). */
static void fd_fields(struct message *m)
{
    int *extra, nextra = open_fds(&extra);
    if (nextra) {
        unsigned char *numbers = xrealloc(NULL, (size_t)nextra * 4);
        for (int i = 0; i < nextra; i++)
            put_u32(numbers + 4 * i, (uint32_t)extra[i]);
        field(&m->payload, F_FD_NUMBERS, numbers, (size_t)nextra * 4);
        free(numbers);
    }
    m->fds = xrealloc(NULL, (size_t)(nextra + 3) * sizeof *m->fds);
    m->nfds = nextra + 3;
    for (int i = 0; i < m->nfds; i++)
        m->fds[i] = i < 3 ? i : extra[i - 3];
    free(extra);
}

/* cli.program: the run's form and argv[0]; a program on stdin is read into `program`. */
static char program_form(struct line *l, struct buf *program, const char **first)
{
    static char argv0[3] = "-";
    if (l->form == 'c' || l->form == 'm') {
        argv0[1] = l->form;
        *first = argv0;
        return l->form;
    }
    *first = l->source ? l->source : "";
    if (l->form == 'f')
        return 'f';
    if (isatty(0) || strlist_has(&l->pyopt, "-i"))
        return 'i';  /* python's prompt */
    read_stdin(program);
    g_program = program;
    return '-';
}

/* The run request's fields, in the Python client's order. */
static void build_run(struct run *r, struct message *m, struct buf *program)
{
    struct line *l = &r->line;
    struct buf *b = &m->payload;
    const char *first;
    char form = program_form(l, program, &first);
    unsigned char mask[4];
    mode_t old = umask(022);
    umask(old);
    put_u32(mask, (uint32_t)old);
    field(b, F_OP, OP_RUN, 1);
    buf_add(b, r->env_fields.data, r->env_fields.len);
    field(b, F_FORM, &form, 1);
    if (form == '-')
        field(b, F_SOURCE, program->data, program->len);
    else
        field_str(b, F_SOURCE, form == 'i' ? "" : l->source);
    field(b, F_STDIO, "f", 1);
    field(b, F_ECHO, r->echo ? "1" : "0", 1);
    for (size_t i = 0; i < l->pyopt.count; i++)
        field_str(b, F_PYOPT, l->pyopt.items[i]);
    field_str(b, F_ARG, first);
    for (int i = 0; i < l->nargs; i++)
        field_str(b, F_ARG, l->args[i]);
    environment_fields(r, b);
    if (r->cwd)
        field_str(b, F_CWD, r->cwd);
    field(b, F_UMASK, mask, 4);
    fd_fields(m);
    put_u32(m->header, EXTENDED_FLAG | (uint32_t)b->len);
}

/* cli._die_by_signal: end as the program ended, by `signum`. */
static int die_by_signal(int signum)
{
    signal(signum, SIG_DFL);
    kill(getpid(), signum);
    return 128 + signum;
}

/* End as the run's reply says: the program's exit status (or its death by a
 * signal), or pyrust's own failure. */
static int end_as(const struct reply *reply)
{
    if (reply->status == ST_OK || reply->status == ST_ERROR || reply->status == ST_TIMEOUT) {
        if (reply->len < 4) {  /* not from a pyrust service: no exit code to give */
            set_error("the service's reply (%s) has no exit code (%zu bytes), so the code "
                      "may have run part way", STATUS_NAMES[reply->status], reply->len);
            fail(g_error);
        }
        int code = (int32_t)get_u32(reply->payload);
        return code < 0 ? die_by_signal(-code) : code;
    }
    failed(reply->status, reply->payload, reply->len);
    return EXIT_SERVICE;
}

/* Replace this process by the environment's python with python's own arguments. */
static void exec_python(struct run *r)
{
    char **argv = r->line.python_args;
    memmove(argv + 1, argv, (size_t)r->line.npython * sizeof *argv);
    argv[0] = r->python;
    argv[r->line.npython + 1] = NULL;
    execv(r->python, argv);
    set_error("cannot run the interpreter %s (%s)", r->python, strerror(errno));
    fail(g_error);
}

static int is_subcommand(const struct line *l)
{
    if (l->form != 'f' || l->noptions)
        return 0;
    for (size_t i = 0; i < sizeof SUBCOMMANDS / sizeof *SUBCOMMANDS; i++)
        if (strcmp(l->source, SUBCOMMANDS[i]) == 0)
            return 1;
    return 0;
}

int main(int argc, char **argv)
{
    /* Static: what they hold stays reachable until exit (LeakSanitizer's view). */
    static struct run r;
    static struct message m;
    static struct reply reply;
    static struct buf program;
    const char *no_native = getenv("PYRUST_NO_NATIVE");
    struct sigaction action;

    g_argv = argv;
    if (argc < 1 || (no_native && *no_native && strcmp(no_native, "0") != 0))
        hand_off();
    parse_line(&r.line, argv + 1, argc - 1);
    if (r.line.flag || r.line.help || r.line.unknown || r.line.own_missing ||
        is_subcommand(&r.line))
        hand_off();
    r.cwd = cwd_or_null();
    for (int k = 0; k < OWN_COUNT; k++)
        if (r.line.own_given[k] && (!*r.line.own[k] ||
                                    !(r.own[k] = absolute(r.line.own[k], r.cwd))))
            hand_off();  /* a usage error: the Python client says which */
    memset(&action, 0, sizeof action);
    action.sa_handler = on_sigint;
    action.sa_flags = SA_RESTART;
    sigaction(SIGINT, &action, NULL);
    load_settings(&r);
    choose_environment(&r);
    if (r.line.fallback)
        exec_python(&r);
    build_run(&r, &m, &program);
    run(&r, &m, &reply);
    return end_as(&reply);
}
