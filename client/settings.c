/* settings.c: the user's settings, read as the Python client reads them.
 *
 * Included by pyrust.c (after _GNU_SOURCE and "pyrust_build.h"); one translation
 * unit, every function static.  Three readers:
 *
 *   read_config   the user's config.toml, as pyrust/config.py's load_config reads
 *                 it, for the plain TOML such a file holds: top-level `key = value`
 *                 lines with strings, booleans, decimal numbers and arrays of strings.
 *   find_project  the nearest pyproject.toml's [tool.pyrust] table, as
 *                 pyrust/project.py's nearest_project reads it; the table is read by
 *                 a port of pyrust/minitoml.py, function by function (mt_*).
 *   expand_user   os.path.expanduser.
 *
 * The hand-off principle: whatever the Python client would refuse, report in its
 * own words, or read with a full TOML parser, gives SETTINGS_HAND_OFF here, never
 * a message of our own.  So what these readers accept is a subset of what the
 * Python client accepts, and means the same.  Every setting's check comes from the
 * generated PYRUST_SETTINGS table, never written twice.
 *
 * Defensive against any input: files are read up to a bound, every scan is bounded
 * by the buffer's length (a NUL byte is a character like any other), nesting is
 * bounded, and out of memory is a hand-off.
 *
 * Built with -DPYRUST_SETTINGS_SELFTEST this file is a program of its own that
 * prints what the readers give, as JSON (tests/test_native_settings.py).
 */
#ifdef PYRUST_SETTINGS_SELFTEST
#define _GNU_SOURCE
#include "pyrust_build.h"
#endif

#include <errno.h>
#include <fcntl.h>
#include <locale.h>
#include <pwd.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#ifndef O_CLOEXEC
#define O_CLOEXEC 0
#endif

/* The interface: static, and not a warning where the includer leaves one unused. */
#if defined(__GNUC__) || defined(__clang__)
#define SETTINGS_API static __attribute__((unused))
#else
#define SETTINGS_API static
#endif

struct strlist { char **items; size_t count; };
enum { SETTINGS_OK = 0, SETTINGS_ABSENT = 1, SETTINGS_HAND_OFF = -1 };

struct user_config {            /* what the client uses of config.toml */
    char *socket;               /* as written (no ~ expansion), or NULL: not set */
    char *python;               /* as written, or NULL */
    struct strlist preload;     /* count 0 if unset */
    int echo;                   /* 1 unless set */
    int autostart;              /* 1 unless set */
};

struct project {
    char *path;                 /* the pyproject.toml holding [tool.pyrust]; NULL: none */
    char *python;               /* as written, or NULL */
    int preload_set;            /* preload given in the table */
    struct strlist preload;
    int echo;                   /* -1 unset, else 0/1 */
};

/* The kinds of check config.py's _Check names (pyrust/native.py renders them). */
enum setting_kind {
    SETTING_SECONDS, SETTING_COUNT, SETTING_BYTES, SETTING_SOCKET, SETTING_MODULES,
    SETTING_BOOLEAN, SETTING_PYTHON, SETTING_LOG_LEVEL
};
struct setting { const char *name; enum setting_kind kind; double low, high; int zero; };
#define SETTINGS_ROW(name, kind, low, high, zero) { name, kind, low, high, zero },
static const struct setting settings_table[] = { PYRUST_SETTINGS(SETTINGS_ROW) };
#undef SETTINGS_ROW
#define SETTINGS_COUNT (sizeof settings_table / sizeof settings_table[0])
static const char *const settings_log_levels[] = { PYRUST_LOG_LEVELS };

/* Largest file read: a config.toml or pyproject.toml beyond it is handed off. */
#define SETTINGS_MAX_CONFIG ((size_t)1 << 20)
#define SETTINGS_MAX_PYPROJECT ((size_t)16 << 20)
/* Integers beyond 2**53 are "huge": outside every setting's range (all are below). */
#define SETTINGS_HUGE 9007199254740992LL

/* --- small helpers ----------------------------------------------------------- */

static char *settings_strndup(const char *s, size_t n)
{
    char *copy;
    if (n == SIZE_MAX)
        return NULL;
    copy = malloc(n + 1);
    if (copy == NULL)
        return NULL;
    memcpy(copy, s, n);
    copy[n] = '\0';
    return copy;
}

static void strlist_free(struct strlist *list)
{
    size_t i;
    for (i = 0; i < list->count; i++)
        free(list->items[i]);
    free(list->items);
    list->items = NULL;
    list->count = 0;
}

/* Append a copy of s[0:n]; return 0, or -1 out of memory.  The capacity is
 * implied by the count: 4, then the next power of two. */
static int strlist_push(struct strlist *list, const char *s, size_t n)
{
    size_t count = list->count;
    char *copy = settings_strndup(s, n);
    if (copy == NULL)
        return -1;
    if (count == 0 || (count >= 4 && (count & (count - 1)) == 0)) {
        size_t capacity = count ? count * 2 : 4;
        char **items;
        if (capacity > SIZE_MAX / sizeof *items) {
            free(copy);
            return -1;
        }
        items = realloc(list->items, capacity * sizeof *items);
        if (items == NULL) {
            free(copy);
            return -1;
        }
        list->items = items;
    }
    list->items[list->count++] = copy;
    return 0;
}

/* Return whether s[0:n] is UTF-8 as python's strict decoder takes it (no
 * overlong forms, no surrogates, nothing above U+10FFFF). */
static int settings_utf8(const char *text, size_t n)
{
    const unsigned char *s = (const unsigned char *)text;
    size_t i = 0, k, len;
    while (i < n) {
        unsigned c = s[i];
        unsigned low = 0x80, high = 0xBF;
        if (c < 0x80) {
            i++;
            continue;
        }
        if (c >= 0xC2 && c <= 0xDF)
            len = 2;
        else if (c == 0xE0)
            len = 3, low = 0xA0;
        else if ((c >= 0xE1 && c <= 0xEC) || c == 0xEE || c == 0xEF)
            len = 3;
        else if (c == 0xED)
            len = 3, high = 0x9F;
        else if (c == 0xF0)
            len = 4, low = 0x90;
        else if (c >= 0xF1 && c <= 0xF3)
            len = 4;
        else if (c == 0xF4)
            len = 4, high = 0x8F;
        else
            return 0;
        if (n - i < len || s[i + 1] < low || s[i + 1] > high)
            return 0;
        for (k = 2; k < len; k++)
            if (s[i + k] < 0x80 || s[i + k] > 0xBF)
                return 0;
        i += len;
    }
    return 1;
}

/* text.replace("\r\n", "\n") in place, as tomllib and minitoml do; return the new length. */
static size_t settings_crlf(char *s, size_t n)
{
    size_t r = 0, w = 0;
    while (r < n) {
        if (s[r] == '\r' && r + 1 < n && s[r + 1] == '\n')
            r++;
        s[w++] = s[r++];
    }
    return w;
}

/* Read the regular file `path` whole (at most `cap` bytes) into a malloc'd buffer.
 * Return 0, or an errno value: ENOENT as open gives it, EFBIG beyond cap, EINVAL
 * for a file that is not regular (a fifo would block: python's reader then decides). */
static int settings_read_file(const char *path, size_t cap, char **data, size_t *size)
{
    struct stat st;
    char *buffer = NULL;
    size_t used = 0, capacity;
    int fd, error = 0;

    *data = NULL;
    *size = 0;
    do
        fd = open(path, O_RDONLY | O_NOCTTY | O_NONBLOCK | O_CLOEXEC);
    while (fd < 0 && errno == EINTR);
    if (fd < 0)
        return errno ? errno : EIO;
    if (fstat(fd, &st) != 0) {
        error = errno ? errno : EIO;
        goto done;
    }
    if (!S_ISREG(st.st_mode)) {
        error = EINVAL;
        goto done;
    }
    capacity = st.st_size > 0 && (uintmax_t)st.st_size < cap ? (size_t)st.st_size + 1 : 4096;
    for (;;) {
        ssize_t got;
        if (used == capacity) {
            char *bigger;
            if (capacity > cap) {
                error = EFBIG;
                goto done;
            }
            capacity = capacity * 2 > cap + 1 ? cap + 1 : capacity * 2;
            bigger = realloc(buffer, capacity);
            if (bigger == NULL) {
                error = ENOMEM;
                goto done;
            }
            buffer = bigger;
        } else if (buffer == NULL) {
            buffer = malloc(capacity);
            if (buffer == NULL) {
                error = ENOMEM;
                goto done;
            }
        }
        got = read(fd, buffer + used, capacity - used);
        if (got < 0) {
            if (errno == EINTR)
                continue;
            error = errno ? errno : EIO;
            goto done;
        }
        if (got == 0)
            break;
        used += (size_t)got;
        if (used > cap) {
            error = EFBIG;
            goto done;
        }
    }
done:
    close(fd);
    if (error) {
        free(buffer);
        return error;
    }
    if (buffer == NULL) {  /* an empty file */
        buffer = malloc(1);
        if (buffer == NULL)
            return ENOMEM;
    }
    *data = buffer;
    *size = used;
    return 0;
}

/* Return whether s is a dotted module name of ASCII identifiers ("a.b_c");
 * python's str.isidentifier takes more (non-ASCII letters): those hand off. */
static int settings_module_name(const char *s)
{
    int part_start = 1;
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '.') {
            if (part_start)
                return 0;
            part_start = 1;
            continue;
        }
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_'
              || (!part_start && c >= '0' && c <= '9')))
            return 0;
        part_start = 0;
    }
    return !part_start;
}

/* --- os.path.expanduser -------------------------------------------------------- */

/* Where path's "~" or "~user" leads: set *home (not owned: the environment's or
 * the passwd entry's) and *rest (the index of what follows the tilde part) and
 * return 1; return 0 if python leaves the path unchanged, -1 out of memory. */
static int settings_home(const char *path, const char **home, size_t *rest)
{
    const char *slash;
    struct passwd *entry;
    size_t i;

    if (path[0] != '~')
        return 0;
    slash = strchr(path + 1, '/');
    i = slash ? (size_t)(slash - path) : strlen(path);
    if (i == 1) {
        const char *variable = getenv("HOME");
        if (variable != NULL) {
            *home = variable;
            *rest = i;
            return 1;
        }
        entry = getpwuid(getuid());
    } else {
        char *name = settings_strndup(path + 1, i - 1);
        if (name == NULL)
            return -1;
        entry = getpwnam(name);
        free(name);
    }
    if (entry == NULL || entry->pw_dir == NULL)
        return 0;
    *home = entry->pw_dir;
    *rest = i;
    return 1;
}

/* The result of expanding with settings_home's answer (home without its trailing
 * slashes, then the rest, or "/" if both are empty). */
static char *settings_join_home(const char *home, const char *rest)
{
    size_t home_len = strlen(home), rest_len = strlen(rest);
    char *result;
    while (home_len > 0 && home[home_len - 1] == '/')
        home_len--;
    if (home_len + rest_len == 0)
        return settings_strndup("/", 1);
    if (home_len > SIZE_MAX - 1 - rest_len)
        return NULL;
    result = malloc(home_len + rest_len + 1);
    if (result == NULL)
        return NULL;
    memcpy(result, home, home_len);
    memcpy(result + home_len, rest, rest_len + 1);
    return result;
}

SETTINGS_API char *expand_user(const char *path)
{
    const char *home;
    size_t rest;
    int found = settings_home(path, &home, &rest);
    if (found < 0)
        return NULL;
    if (found == 0)
        return settings_strndup(path, strlen(path));
    return settings_join_home(home, path + rest);
}

/* --- config.toml ------------------------------------------------------------------ */

enum { CV_NONE, CV_STRING, CV_BOOL, CV_INT, CV_FLOAT, CV_ARRAY };
struct cfg_value {
    int type;
    const char *string;         /* CV_STRING: a slice of the text */
    size_t length;
    int boolean;                /* CV_BOOL */
    long long integer;          /* CV_INT, saturated at +-SETTINGS_HUGE */
    double number;              /* CV_FLOAT */
    struct strlist array;       /* CV_ARRAY: copies of its strings */
};
struct cfg_cursor { const char *s; size_t pos, end; };

static int cfg_illegal(unsigned char c)
{
    return (c < 0x20 && c != '\t') || c == 0x7f;
}

static int cfg_bare(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')
           || c == '-' || c == '_';
}

static int cfg_digit(const struct cfg_cursor *c, size_t i)
{
    return i < c->end && c->s[i] >= '0' && c->s[i] <= '9';
}

static void cfg_skip_ws(struct cfg_cursor *c)
{
    while (c->pos < c->end && (c->s[c->pos] == ' ' || c->s[c->pos] == '\t'))
        c->pos++;
}

/* Skip the comment at pos up to its line break; -1 for a control character in it. */
static int cfg_comment(struct cfg_cursor *c)
{
    while (c->pos < c->end && c->s[c->pos] != '\n') {
        if (cfg_illegal((unsigned char)c->s[c->pos]))
            return -1;
        c->pos++;
    }
    return 0;
}

/* Skip what may sit between an array's items: spaces, line breaks, comments. */
static int cfg_array_gap(struct cfg_cursor *c)
{
    for (;;) {
        cfg_skip_ws(c);
        if (c->pos < c->end && c->s[c->pos] == '\n')
            c->pos++;
        else if (c->pos < c->end && c->s[c->pos] == '#') {
            if (cfg_comment(c) != 0)
                return -1;
        } else
            return 0;
    }
}

/* A one-line string at pos: basic without backslashes, or literal. */
static int cfg_string(struct cfg_cursor *c, const char **string, size_t *length)
{
    char quote = c->s[c->pos];
    size_t start;
    if (c->end - c->pos >= 3 && c->s[c->pos + 1] == quote && c->s[c->pos + 2] == quote)
        return -1;  /* multi-line */
    start = ++c->pos;
    while (c->pos < c->end) {
        unsigned char ch = (unsigned char)c->s[c->pos];
        if (ch == (unsigned char)quote) {
            *string = c->s + start;
            *length = c->pos - start;
            c->pos++;
            return 0;
        }
        if ((ch == '\\' && quote == '"') || cfg_illegal(ch))
            return -1;  /* an escape; a control character or a line break */
        c->pos++;
    }
    return -1;  /* unterminated */
}

/* Skip [0-9] (_?[0-9])* at *i; the first digit must be there. */
static int cfg_digits(const struct cfg_cursor *c, size_t *i)
{
    if (!cfg_digit(c, *i))
        return -1;
    (*i)++;
    for (;;) {
        if (cfg_digit(c, *i))
            (*i)++;
        else if (*i < c->end && c->s[*i] == '_' && cfg_digit(c, *i + 1))
            *i += 2;
        else
            return 0;
    }
}

/* A decimal integer or float, TOML's grammar exactly (as tomllib's RE_NUMBER),
 * spanning the whole token [start, c->pos). */
static int cfg_number(struct cfg_cursor *c, size_t start, struct cfg_value *value)
{
    size_t i = start, k;
    int is_float = 0, negative = 0;
    if (i < c->pos && (c->s[i] == '+' || c->s[i] == '-'))
        negative = c->s[i++] == '-';
    if (i < c->pos && c->s[i] == '0')
        i++;
    else if (i < c->pos && c->s[i] >= '1' && c->s[i] <= '9') {
        if (cfg_digits(c, &i) != 0)
            return -1;
    } else
        return -1;
    if (i < c->pos && c->s[i] == '.') {
        i++;
        if (cfg_digits(c, &i) != 0)
            return -1;
        is_float = 1;
    }
    if (i < c->pos && (c->s[i] == 'e' || c->s[i] == 'E')) {
        i++;
        if (i < c->pos && (c->s[i] == '+' || c->s[i] == '-'))
            i++;
        if (cfg_digits(c, &i) != 0)
            return -1;
        is_float = 1;
    }
    if (i != c->pos)
        return -1;
    if (!is_float) {
        long long integer = 0;
        for (k = start; k < i; k++) {
            if (c->s[k] < '0' || c->s[k] > '9')
                continue;
            if (integer < SETTINGS_HUGE)
                integer = integer * 10 + (c->s[k] - '0');
        }
        if (integer > SETTINGS_HUGE)
            integer = SETTINGS_HUGE;
        value->type = CV_INT;
        value->integer = negative ? -integer : integer;
    } else {
        /* strtod without the underscores; it reads the locale's decimal point */
        struct lconv *locale = localeconv();
        char *copy, *end;
        size_t n = 0;
        if (locale == NULL || strcmp(locale->decimal_point, ".") != 0)
            return -1;
        copy = malloc(i - start + 1);
        if (copy == NULL)
            return -1;
        for (k = start; k < i; k++)
            if (c->s[k] != '_')
                copy[n++] = c->s[k];
        copy[n] = '\0';
        value->number = strtod(copy, &end);
        k = (size_t)(end - copy);
        free(copy);
        if (k != n)
            return -1;
        value->type = CV_FLOAT;
    }
    return 0;
}

/* The value at pos; anything but the subset read here is -1 (hand off). */
static int cfg_value(struct cfg_cursor *c, struct cfg_value *value)
{
    size_t start;
    char ch;
    if (c->pos >= c->end)
        return -1;
    ch = c->s[c->pos];
    if (ch == '"' || ch == '\'') {
        value->type = CV_STRING;
        return cfg_string(c, &value->string, &value->length);
    }
    if (ch == '[') {
        value->type = CV_ARRAY;
        c->pos++;
        if (cfg_array_gap(c) != 0)
            return -1;
        for (;;) {
            const char *item;
            size_t length;
            if (c->pos < c->end && c->s[c->pos] == ']')
                break;
            if (c->pos >= c->end || (c->s[c->pos] != '"' && c->s[c->pos] != '\''))
                return -1;
            if (cfg_string(c, &item, &length) != 0
                || strlist_push(&value->array, item, length) != 0
                || cfg_array_gap(c) != 0)
                return -1;
            if (c->pos < c->end && c->s[c->pos] == ']')
                break;
            if (c->pos >= c->end || c->s[c->pos] != ',')
                return -1;
            c->pos++;
            if (cfg_array_gap(c) != 0)
                return -1;
        }
        c->pos++;
        return 0;
    }
    if (c->end - c->pos >= 4 && memcmp(c->s + c->pos, "true", 4) == 0) {
        value->type = CV_BOOL;
        value->boolean = 1;
        c->pos += 4;
        return 0;
    }
    if (c->end - c->pos >= 5 && memcmp(c->s + c->pos, "false", 5) == 0) {
        value->type = CV_BOOL;
        value->boolean = 0;
        c->pos += 5;
        return 0;
    }
    /* a number: the whole token of number, date, inf and nan characters */
    start = c->pos;
    while (c->pos < c->end && (cfg_bare((unsigned char)c->s[c->pos]) || c->s[c->pos] == '+'
                               || c->s[c->pos] == '.' || c->s[c->pos] == ':'))
        c->pos++;
    return cfg_number(c, start, value);
}

static int cfg_in_range(double value, const struct setting *setting)
{
    return setting->low <= value && value <= setting->high;
}

/* An integer (not a boolean, not a float) from low to high. */
static int cfg_integer_in_range(const struct cfg_value *value, const struct setting *setting)
{
    if (value->type != CV_INT || value->integer <= -SETTINGS_HUGE
        || value->integer >= SETTINGS_HUGE)
        return -1;
    return cfg_in_range((double)value->integer, setting) ? 0 : -1;
}

/* config.check_setting's verdict on `value` for `setting`: 0 accepted, -1 not (or
 * not known to be: a non-ASCII module name, a home directory that is not ASCII). */
static int cfg_check(const struct setting *setting, const struct cfg_value *value)
{
    size_t i;
    switch (setting->kind) {
    case SETTING_SECONDS:
        if (value->type == CV_FLOAT)
            return cfg_in_range(value->number, setting) ? 0 : -1;
        return cfg_integer_in_range(value, setting);
    case SETTING_COUNT:
        return cfg_integer_in_range(value, setting);
    case SETTING_BYTES:
        if (value->type == CV_INT && value->integer == 0 && setting->zero)
            return 0;
        return cfg_integer_in_range(value, setting);
    case SETTING_SOCKET:
    case SETTING_PYTHON: {
        const char *home = NULL;
        size_t rest = 0, length;
        char *path;
        int found;
        if (value->type != CV_STRING || (setting->kind == SETTING_SOCKET && value->length == 0))
            return -1;
        path = settings_strndup(value->string, value->length);
        if (path == NULL)
            return -1;
        found = settings_home(path, &home, &rest);
        if (found < 0) {
            free(path);
            return -1;
        }
        if (found > 0) {
            /* python measures a socket path in UTF-8 after decoding the home
             * directory with the file system's encoding: the same bytes for ASCII */
            const char *h;
            char *expanded;
            for (h = home; *h && setting->kind == SETTING_SOCKET; h++)
                if ((unsigned char)*h >= 0x80) {
                    free(path);
                    return -1;
                }
            expanded = settings_join_home(home, path + rest);
            free(path);
            if (expanded == NULL)
                return -1;
            path = expanded;
        }
        length = strlen(path);
        found = path[0] == '/'
                && (setting->kind != SETTING_SOCKET || length <= (size_t)setting->high);
        free(path);
        return found ? 0 : -1;
    }
    case SETTING_MODULES:
        if (value->type != CV_ARRAY)
            return -1;
        for (i = 0; i < value->array.count; i++)
            if (!settings_module_name(value->array.items[i]))
                return -1;
        return 0;
    case SETTING_BOOLEAN:
        return value->type == CV_BOOL ? 0 : -1;
    case SETTING_LOG_LEVEL:
        if (value->type != CV_STRING)
            return -1;
        for (i = 0; i < sizeof settings_log_levels / sizeof settings_log_levels[0]; i++)
            if (strlen(settings_log_levels[i]) == value->length
                && memcmp(settings_log_levels[i], value->string, value->length) == 0)
                return 0;
        return -1;
    }
    return -1;
}

/* Store what the client uses of a checked value; -1 out of memory. */
static int cfg_store(const char *name, struct cfg_value *value, struct user_config *config,
                     long long *workers, long long *max_workers)
{
    if (strcmp(name, "socket") == 0)
        return (config->socket = settings_strndup(value->string, value->length)) ? 0 : -1;
    if (strcmp(name, "python") == 0)
        return (config->python = settings_strndup(value->string, value->length)) ? 0 : -1;
    if (strcmp(name, "preload") == 0) {
        config->preload = value->array;  /* taken over */
        value->array.items = NULL;
        value->array.count = 0;
    } else if (strcmp(name, "echo") == 0)
        config->echo = value->boolean;
    else if (strcmp(name, "autostart") == 0)
        config->autostart = value->boolean;
    else if (strcmp(name, "workers") == 0)
        *workers = value->integer;
    else if (strcmp(name, "max_workers") == 0)
        *max_workers = value->integer;
    return 0;
}

/* config.Config's default `workers`: the online CPUs (at least 1), at most the
 * setting's own bound (MAX_WORKERS). */
static long long cfg_default_workers(const struct setting *workers)
{
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    long long count = cpus > 0 ? cpus : 1;
    if (workers != NULL && (double)count > workers->high)
        count = (long long)workers->high;
    return count;
}

/* Parse and check the document text[0:n] (mutable: CRLF is folded in place). */
static int cfg_parse(char *text, size_t n, struct user_config *config)
{
    struct cfg_cursor c;
    unsigned char seen[SETTINGS_COUNT];
    const struct setting *workers_setting = NULL;
    long long workers = -1, max_workers = 0;
    size_t k;

    if (!settings_utf8(text, n))
        return -1;
    c.s = text;
    c.pos = 0;
    c.end = settings_crlf(text, n);
    memset(seen, 0, sizeof seen);
    for (k = 0; k < SETTINGS_COUNT; k++)
        if (strcmp(settings_table[k].name, "workers") == 0)
            workers_setting = &settings_table[k];
    for (;;) {
        char ch;
        cfg_skip_ws(&c);
        if (c.pos >= c.end)
            break;
        ch = c.s[c.pos];
        if (ch == '\n') {
            c.pos++;
            continue;
        }
        if (cfg_bare((unsigned char)ch)) {
            size_t start = c.pos, length;
            struct cfg_value value;
            int rc;
            while (c.pos < c.end && cfg_bare((unsigned char)c.s[c.pos]))
                c.pos++;
            length = c.pos - start;
            for (k = 0; k < SETTINGS_COUNT; k++)
                if (strlen(settings_table[k].name) == length
                    && memcmp(settings_table[k].name, c.s + start, length) == 0)
                    break;
            if (k == SETTINGS_COUNT || seen[k])
                return -1;  /* an unknown key, or a key twice */
            seen[k] = 1;
            cfg_skip_ws(&c);
            if (c.pos >= c.end || c.s[c.pos] != '=')
                return -1;  /* a dotted key, or no value */
            c.pos++;
            cfg_skip_ws(&c);
            memset(&value, 0, sizeof value);
            rc = cfg_value(&c, &value);
            if (rc == 0)
                rc = cfg_check(&settings_table[k], &value);
            if (rc == 0)
                rc = cfg_store(settings_table[k].name, &value, config, &workers,
                               &max_workers);
            strlist_free(&value.array);
            if (rc != 0)
                return -1;
            cfg_skip_ws(&c);
        } else if (ch != '#')
            return -1;  /* a table header, a quoted key, ... */
        if (c.pos < c.end && c.s[c.pos] == '#' && cfg_comment(&c) != 0)
            return -1;
        if (c.pos >= c.end)
            break;
        if (c.s[c.pos] != '\n')
            return -1;
        c.pos++;
    }
    /* apply_settings: a pool whose ceiling is below its spares */
    if (max_workers != 0) {
        if (workers < 0)
            workers = cfg_default_workers(workers_setting);
        if (max_workers < workers)
            return -1;
    }
    return 0;
}

SETTINGS_API void free_user_config(struct user_config *config)
{
    free(config->socket);
    free(config->python);
    config->socket = config->python = NULL;
    strlist_free(&config->preload);
    config->echo = config->autostart = 1;
}

SETTINGS_API int read_config(const char *path, int explicit, struct user_config *config)
{
    char *data;
    size_t size;
    int error, rc;

    memset(config, 0, sizeof *config);
    config->echo = config->autostart = 1;
    if (path == NULL)
        return SETTINGS_HAND_OFF;
    error = settings_read_file(path, SETTINGS_MAX_CONFIG, &data, &size);
    if (error == ENOENT)
        return explicit ? SETTINGS_HAND_OFF : SETTINGS_ABSENT;
    if (error != 0)
        return SETTINGS_HAND_OFF;
    rc = cfg_parse(data, size, config);
    free(data);
    if (rc != 0) {
        free_user_config(config);
        return SETTINGS_HAND_OFF;
    }
    return SETTINGS_OK;
}

/* --- pyrust/minitoml.py, function by function ----------------------------------------
 * Python's exceptions are return codes: MT_UNSUPPORTED is minitoml.Unsupported;
 * MT_LIMIT (nesting deeper than MT_MAX_DEPTH, where python would recurse on) and
 * MT_NOMEM are hand-offs of this port's own.  Positions are byte offsets in UTF-8
 * text; every character the reader tests is ASCII, so they behave as python's. */

enum { MT_OK = 0, MT_UNSUPPORTED = 1, MT_LIMIT = 2, MT_NOMEM = 3 };
enum { MT_UNSET, MT_STRING, MT_BOOL, MT_ARRAY };
#define MT_MAX_DEPTH 64
#define MT_NPOS SIZE_MAX
#define MT_TRY(call) do { int mt_rc_ = (call); if (mt_rc_ != MT_OK) return mt_rc_; } while (0)

struct mt_value { int kind; char *string; int boolean; struct strlist array; };
/* The [tool.pyrust] table: found (python's table is not None) and its keys. */
struct mt_table { int found; struct mt_value python, preload, echo; };
struct mt_reader { const char *text; size_t pos, end; int depth; };
/* A key path as _touches looks at it: its length and what its first two parts are. */
enum { MT_PART_OTHER, MT_PART_TOOL, MT_PART_PYRUST };
struct mt_path { size_t count; int part[2]; };

static void mt_value_free(struct mt_value *value)
{
    free(value->string);
    value->string = NULL;
    strlist_free(&value->array);
    value->kind = MT_UNSET;
}

static void mt_table_free(struct mt_table *table)
{
    mt_value_free(&table->python);
    mt_value_free(&table->preload);
    mt_value_free(&table->echo);
    table->found = 0;
}

static int mt_ws(int c) { return c == ' ' || c == '\t'; }
static int mt_bare(int c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9')
           || c == '-' || c == '_';
}
static int mt_scalar(int c) { return mt_bare(c) || c == '+' || c == '.' || c == ':'; }
static int mt_numeric(int c) { return (c >= '0' && c <= '9') || c == '+' || c == '-'; }
/* _WORDS: the words a skimmed value may be (booleans, inf and nan). */
static int mt_word(const char *word, size_t length)
{
    return (length == 4 && memcmp(word, "true", 4) == 0)
           || (length == 5 && memcmp(word, "false", 5) == 0)
           || (length == 3 && (memcmp(word, "inf", 3) == 0 || memcmp(word, "nan", 3) == 0));
}
static int mt_quote(int c) { return c == '"' || c == '\''; }
static int mt_illegal(int c) { return (c >= 0 && c < 32 && c != 9) || c == 0x7f; }

/* peek: the character at pos, or -1 ("") at the end. */
static int mt_peek(const struct mt_reader *r)
{
    return r->pos < r->end ? (unsigned char)r->text[r->pos] : -1;
}

static void mt_skip(struct mt_reader *r, int (*in)(int))
{
    while (r->pos < r->end && in((unsigned char)r->text[r->pos]))
        r->pos++;
}

static int mt_expect(struct mt_reader *r, int c)
{
    if (mt_peek(r) != c)
        return MT_UNSUPPORTED;
    r->pos++;
    return MT_OK;
}

static int mt_startswith(const struct mt_reader *r, const char *word, size_t length, size_t at)
{
    return at <= r->end && r->end - at >= length && memcmp(r->text + at, word, length) == 0;
}

/* str.find(delimiter, start, stop): the first occurrence within [start, stop). */
static size_t mt_find_in(const struct mt_reader *r, const char *delimiter, size_t length,
                         size_t start, size_t stop)
{
    size_t i;
    if (stop > r->end)
        stop = r->end;
    if (start > stop || stop - start < length)
        return MT_NPOS;
    for (i = start; i <= stop - length; i++)
        if (r->text[i] == delimiter[0] && memcmp(r->text + i, delimiter, length) == 0)
            return i;
    return MT_NPOS;
}

static int mt_any_illegal(const struct mt_reader *r, size_t start, size_t stop)
{
    size_t i;
    for (i = start; i < stop; i++)
        if (mt_illegal((unsigned char)r->text[i]))
            return 1;
    return 0;
}

/* find: where `delimiter` closes the string whose content starts at `start`;
 * with `escapes`, a backslash hides the character after it.  (The delimiter's
 * first occurrence at or after start is remembered while start only grows: the
 * same answers as python's, in linear time.) */
static int mt_find(struct mt_reader *r, const char *delimiter, size_t length, size_t start,
                   int escapes, size_t *close_at)
{
    size_t close = MT_NPOS;
    for (;;) {
        size_t backslash;
        if (close == MT_NPOS || close < start)
            close = mt_find_in(r, delimiter, length, start, r->end);
        if (close == MT_NPOS)
            return MT_UNSUPPORTED;  /* an unterminated string */
        backslash = escapes ? mt_find_in(r, "\\", 1, start, close) : MT_NPOS;
        if (backslash == MT_NPOS) {
            *close_at = close;
            return MT_OK;
        }
        start = backslash + 2;
    }
}

/* string: the string at pos; *none for a skimmed multi-line or escaped one,
 * else its content text[*start : *start + *length]. */
static int mt_string(struct mt_reader *r, int strict, size_t *start_at, size_t *length,
                     int *none)
{
    char quote = r->text[r->pos], triple[3];
    size_t start = r->pos + 1, close;
    int i;

    triple[0] = triple[1] = triple[2] = quote;
    *none = 0;
    if (mt_startswith(r, triple, 3, r->pos)) {
        if (strict)
            return MT_UNSUPPORTED;  /* a multi-line string */
        MT_TRY(mt_find(r, triple, 3, start + 2, quote == '"', &close));
        r->pos = close + 3;
        for (i = 0; i < 2; i++)  /* up to two quotes end the content: """a""""" */
            if (mt_peek(r) == (unsigned char)quote)
                r->pos++;
        *none = 1;
        return MT_OK;
    }
    MT_TRY(mt_find(r, &quote, 1, start, quote == '"', &close));
    if (mt_any_illegal(r, start, close))
        return MT_UNSUPPORTED;  /* a line break or a control character */
    r->pos = close + 1;
    if (quote == '"' && mt_find_in(r, "\\", 1, start, close) != MT_NPOS) {
        if (strict)
            return MT_UNSUPPORTED;  /* an escape sequence */
        *none = 1;
        return MT_OK;
    }
    *start_at = start;
    *length = close - start;
    return MT_OK;
}

static int mt_classify(const char *part, size_t length)
{
    if (length == 4 && memcmp(part, "tool", 4) == 0)
        return MT_PART_TOOL;
    if (length == 6 && memcmp(part, "pyrust", 6) == 0)
        return MT_PART_PYRUST;
    return MT_PART_OTHER;
}

/* key: the (dotted) key at pos, skipping the spaces after it. */
static int mt_key(struct mt_reader *r, struct mt_path *path)
{
    path->count = 0;
    path->part[0] = path->part[1] = MT_PART_OTHER;
    for (;;) {
        size_t start, length;
        if (mt_quote(mt_peek(r))) {
            int none;
            MT_TRY(mt_string(r, 1, &start, &length, &none));
        } else {
            start = r->pos;
            mt_skip(r, mt_bare);
            if (r->pos == start)
                return MT_UNSUPPORTED;  /* not a key */
            length = r->pos - start;
        }
        if (path->count < 2)
            path->part[path->count] = mt_classify(r->text + start, length);
        path->count++;
        mt_skip(r, mt_ws);
        if (mt_peek(r) != '.')
            return MT_OK;
        r->pos++;
        mt_skip(r, mt_ws);
    }
}

/* _touches: whether the path is tool, tool.pyrust or below it. */
static int mt_touches(const struct mt_path *path)
{
    if (path->count == 0)
        return 1;
    if (path->part[0] != MT_PART_TOOL)
        return 0;
    return path->count == 1 || path->part[1] == MT_PART_PYRUST;
}

static int mt_is_table(const struct mt_path *path)
{
    return path->count == 2 && path->part[0] == MT_PART_TOOL && path->part[1] == MT_PART_PYRUST;
}

/* current + key, as far as _touches looks. */
static struct mt_path mt_concat(const struct mt_path *a, const struct mt_path *b)
{
    struct mt_path path = *a;
    size_t i;
    for (i = 0; path.count < 2 && i < b->count && i < 2; i++)
        path.part[path.count++] = b->part[i];
    path.count = a->count + b->count;
    return path;
}

static int mt_value(struct mt_reader *r, int strict, struct mt_value *out);

static int mt_comment(struct mt_reader *r)
{
    size_t close = mt_find_in(r, "\n", 1, r->pos, r->end);
    if (close == MT_NPOS)
        close = r->end;
    if (mt_any_illegal(r, r->pos, close))
        return MT_UNSUPPORTED;  /* a control character in a comment */
    r->pos = close;
    return MT_OK;
}

/* blank: spaces, comments and line breaks. */
static int mt_blank(struct mt_reader *r)
{
    for (;;) {
        int c;
        mt_skip(r, mt_ws);
        c = mt_peek(r);
        if (c == '#')
            MT_TRY(mt_comment(r));
        else if (c == '\n')
            r->pos++;
        else
            return MT_OK;
    }
}

/* line_end: the rest of a line: spaces, a comment, the line break or the end. */
static int mt_line_end(struct mt_reader *r)
{
    mt_skip(r, mt_ws);
    if (mt_peek(r) == '#')
        MT_TRY(mt_comment(r));
    if (r->pos < r->end)
        MT_TRY(mt_expect(r, '\n'));
    return MT_OK;
}

/* array: the array at pos; strict: an array of strings, into out. */
static int mt_array(struct mt_reader *r, int strict, struct mt_value *out)
{
    if (++r->depth > MT_MAX_DEPTH)
        return MT_LIMIT;
    r->pos++;
    if (strict)
        out->kind = MT_ARRAY;
    for (;;) {
        MT_TRY(mt_blank(r));
        if (mt_peek(r) == ']')
            break;
        if (strict) {
            size_t start, length;
            int none;
            if (!mt_quote(mt_peek(r)))
                return MT_UNSUPPORTED;  /* an array holding other than strings */
            MT_TRY(mt_string(r, 1, &start, &length, &none));
            if (strlist_push(&out->array, r->text + start, length) != 0)
                return MT_NOMEM;
        } else
            MT_TRY(mt_value(r, 0, NULL));
        MT_TRY(mt_blank(r));
        if (mt_peek(r) == ']')
            break;
        MT_TRY(mt_expect(r, ','));
    }
    r->pos++;
    r->depth--;
    return MT_OK;
}

/* inline_table: skim the inline table at pos (one line, as TOML 1.0 wants). */
static int mt_inline_table(struct mt_reader *r)
{
    struct mt_path ignored;
    if (++r->depth > MT_MAX_DEPTH)
        return MT_LIMIT;
    r->pos++;
    mt_skip(r, mt_ws);
    if (mt_peek(r) == '}') {
        r->pos++;
        r->depth--;
        return MT_OK;
    }
    for (;;) {
        MT_TRY(mt_key(r, &ignored));
        MT_TRY(mt_expect(r, '='));
        mt_skip(r, mt_ws);
        MT_TRY(mt_value(r, 0, NULL));
        mt_skip(r, mt_ws);
        if (mt_peek(r) == '}') {
            r->pos++;
            r->depth--;
            return MT_OK;
        }
        MT_TRY(mt_expect(r, ','));
        mt_skip(r, mt_ws);
    }
}

/* value: the value at pos.  strict: only what the table may hold, into out;
 * otherwise skim any value. */
static int mt_value(struct mt_reader *r, int strict, struct mt_value *out)
{
    int c = mt_peek(r);
    if (mt_quote(c)) {
        size_t start = 0, length = 0;
        int none;
        MT_TRY(mt_string(r, strict, &start, &length, &none));
        if (strict) {  /* never none: strict refuses what would be */
            out->kind = MT_STRING;
            out->string = settings_strndup(r->text + start, length);
            if (out->string == NULL)
                return MT_NOMEM;
        }
        return MT_OK;
    }
    if (c == '[')
        return mt_array(r, strict, out);
    if (strict) {
        if (mt_startswith(r, "true", 4, r->pos)) {
            r->pos += 4;
            out->kind = MT_BOOL;
            out->boolean = 1;
            return MT_OK;
        }
        if (mt_startswith(r, "false", 5, r->pos)) {
            r->pos += 5;
            out->kind = MT_BOOL;
            out->boolean = 0;
            return MT_OK;
        }
        return MT_UNSUPPORTED;  /* a value other than a string, a boolean or an array */
    }
    if (c == '{')
        return mt_inline_table(r);
    {
        size_t start = r->pos, length;
        const char *word;
        mt_skip(r, mt_scalar);
        word = r->text + start;
        length = r->pos - start;
        if (length == 0 || (!mt_numeric((unsigned char)word[0]) && !mt_word(word, length)))
            return MT_UNSUPPORTED;  /* not a value */
    }
    return MT_OK;
}

/* table: the body of [tool.pyrust], up to the next header or the end. */
static int mt_table(struct mt_reader *r, struct mt_table *table)
{
    for (;;) {
        size_t start, length;
        struct mt_value *slot = NULL;
        MT_TRY(mt_blank(r));
        if (r->pos >= r->end || mt_peek(r) == '[')
            return MT_OK;
        start = r->pos;
        mt_skip(r, mt_bare);
        length = r->pos - start;
        if (length == 6 && memcmp(r->text + start, "python", 6) == 0)
            slot = &table->python;
        else if (length == 7 && memcmp(r->text + start, "preload", 7) == 0)
            slot = &table->preload;
        else if (length == 4 && memcmp(r->text + start, "echo", 4) == 0)
            slot = &table->echo;
        if (slot == NULL || slot->kind != MT_UNSET)
            return MT_UNSUPPORTED;  /* a key other than python, preload, echo, or one twice */
        mt_skip(r, mt_ws);
        MT_TRY(mt_expect(r, '='));
        mt_skip(r, mt_ws);
        MT_TRY(mt_value(r, 1, slot));
        MT_TRY(mt_line_end(r));
    }
}

/* header: the key path of the header at pos, and whether it is [[...]]. */
static int mt_header(struct mt_reader *r, struct mt_path *path, int *array)
{
    r->pos++;
    *array = mt_peek(r) == '[';
    r->pos += (size_t)*array;
    mt_skip(r, mt_ws);
    MT_TRY(mt_key(r, path));
    MT_TRY(mt_expect(r, ']'));
    if (*array && mt_peek(r) != ']')
        return MT_UNSUPPORTED;  /* an unclosed [[ */
    r->pos += (size_t)*array;
    return mt_line_end(r);
}

/* document: the table (or none), reading the whole document. */
static int mt_document(struct mt_reader *r, struct mt_table *table)
{
    struct mt_path current;
    current.count = 0;
    current.part[0] = current.part[1] = MT_PART_OTHER;
    for (;;) {
        MT_TRY(mt_blank(r));
        if (r->pos >= r->end)
            return MT_OK;
        if (mt_peek(r) == '[') {
            struct mt_path path;
            int array;
            MT_TRY(mt_header(r, &path, &array));
            if (mt_is_table(&path) && !array) {
                if (table->found)
                    return MT_UNSUPPORTED;  /* a second [tool.pyrust] */
                table->found = 1;
                MT_TRY(mt_table(r, table));
            } else if (mt_touches(&path) && (array || path.count > 2))
                return MT_UNSUPPORTED;  /* a table in or around [tool.pyrust] */
            current = path;
        } else {  /* a key = value line of another table */
            struct mt_path key, full;
            MT_TRY(mt_key(r, &key));
            full = mt_concat(&current, &key);
            if (mt_touches(&full))
                return MT_UNSUPPORTED;  /* a key that reaches into [tool.pyrust] */
            MT_TRY(mt_expect(r, '='));
            mt_skip(r, mt_ws);
            MT_TRY(mt_value(r, 0, NULL));
            MT_TRY(mt_line_end(r));
        }
    }
}

/* minitoml.read of text[0:n], whose "\r\n" are already "\n": MT_OK with
 * table->found (and its keys), or why not; on failure the table is freed. */
static int mt_read(const char *text, size_t n, struct mt_table *table)
{
    struct mt_reader r;
    int rc;
    memset(table, 0, sizeof *table);
    r.text = text;
    r.pos = 0;
    r.end = n;
    r.depth = 0;
    rc = mt_document(&r, table);
    if (rc != MT_OK)
        mt_table_free(table);
    return rc;
}

/* --- pyrust/project.py ------------------------------------------------------------ */

/* os.path.join(a, b) for a relative b. */
static char *settings_path_join(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b), slash = la > 0 && a[la - 1] != '/';
    char *path;
    if (la > SIZE_MAX - lb - 2)
        return NULL;
    path = malloc(la + slash + lb + 1);
    if (path == NULL)
        return NULL;
    memcpy(path, a, la);
    if (slash)
        path[la] = '/';
    memcpy(path + la + slash, b, lb + 1);
    return path;
}

/* os.path.dirname(p). */
static char *settings_dirname(const char *p)
{
    const char *last = strrchr(p, '/');
    size_t head = last ? (size_t)(last - p) + 1 : 0, i, trimmed = head;
    int all_slashes = 1;
    for (i = 0; i < head; i++)
        if (p[i] != '/')
            all_slashes = 0;
    if (head > 0 && !all_slashes)
        while (trimmed > 0 && p[trimmed - 1] == '/')
            trimmed--;
    return settings_strndup(p, trimmed);
}

/* os.path.isfile. */
static int settings_isfile(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

/* os.path.normpath(path) (python 3.11's posixpath, which later versions match). */
static char *settings_normpath(const char *path)
{
    size_t n = strlen(path), initial = 0, used = 0, count = 0, i = 0;
    size_t *starts, *lengths;
    char *result;
    if (n == 0)
        return settings_strndup(".", 1);
    if (path[0] == '/')
        initial = path[1] == '/' && path[2] != '/' ? 2 : 1;
    /* at most n / 2 + 1 components; the result is never longer than path */
    starts = malloc((n / 2 + 1) * sizeof *starts);
    lengths = malloc((n / 2 + 1) * sizeof *lengths);
    result = malloc(n + 2);
    if (starts == NULL || lengths == NULL || result == NULL) {
        free(starts);
        free(lengths);
        free(result);
        return NULL;
    }
    while (i <= n) {
        size_t start = i, length;
        while (i < n && path[i] != '/')
            i++;
        length = i - start;
        i++;  /* past the slash (or the end) */
        if (length == 0 || (length == 1 && path[start] == '.'))
            continue;
        if (length == 2 && path[start] == '.' && path[start + 1] == '.'
            && (initial || count > 0)
            && !(count > 0 && lengths[count - 1] == 2 && path[starts[count - 1]] == '.'
                 && path[starts[count - 1] + 1] == '.')) {
            if (count > 0)
                count--;
            continue;
        }
        starts[count] = start;
        lengths[count++] = length;
    }
    for (i = 0; i < initial; i++)
        result[used++] = '/';
    for (i = 0; i < count; i++) {
        if (i > 0)
            result[used++] = '/';
        memcpy(result + used, path + starts[i], lengths[i]);
        used += lengths[i];
    }
    if (used == 0)
        result[used++] = '.';
    result[used] = '\0';
    free(starts);
    free(lengths);
    return result;
}

/* project.interpreter_path(value, base): the interpreter `value` names, made
 * absolute against directory `base` (~ expanded, symlinks kept); a directory
 * means its bin/python.  A malloc'd string, or NULL out of memory.  For the
 * client: the project's python (base: the pyproject.toml's directory), the
 * configuration's (base "/"), --python and $PYRUST_PYTHON. */
SETTINGS_API char *interpreter_path(const char *value, const char *base)
{
    char *expanded = expand_user(value), *joined, *path;
    struct stat st;
    if (expanded == NULL)
        return NULL;
    joined = expanded[0] == '/' ? expanded : settings_path_join(base, expanded);
    if (joined != expanded)
        free(expanded);
    if (joined == NULL)
        return NULL;
    path = settings_normpath(joined);
    free(joined);
    if (path != NULL && stat(path, &st) == 0 && S_ISDIR(st.st_mode)) {
        char *python = settings_path_join(path, "bin/python");
        free(path);
        path = python;
    }
    return path;
}

SETTINGS_API void free_project(struct project *project)
{
    free(project->path);
    free(project->python);
    project->path = project->python = NULL;
    strlist_free(&project->preload);
    project->preload_set = 0;
    project->echo = -1;
}

/* load_project(path) and _project's checks.  path is taken over. */
static int settings_load_project(char *path, struct project *project)
{
    static const char marker[] = "[tool.pyrust]";
    const size_t marker_length = sizeof marker - 1;
    struct mt_table table;
    char *data;
    size_t size, i;
    int found = 0, rc;

    if (settings_read_file(path, SETTINGS_MAX_PYPROJECT, &data, &size) != 0) {
        free(path);
        return SETTINGS_HAND_OFF;
    }
    for (i = 0; !found && size >= marker_length && i <= size - marker_length; i++)
        found = data[i] == '[' && memcmp(data + i, marker, marker_length) == 0;
    if (!found) {
        free(data);
        free(path);
        return SETTINGS_OK;
    }
    if (!settings_utf8(data, size)) {
        free(data);
        free(path);
        return SETTINGS_HAND_OFF;
    }
    rc = mt_read(data, settings_crlf(data, size), &table);
    free(data);
    if (rc != MT_OK) {
        free(path);
        return SETTINGS_HAND_OFF;
    }
    if (!table.found) {  /* the marker was in a string or a comment */
        free(path);
        return SETTINGS_OK;
    }
    /* _project: python a non-empty string, preload module names, echo a boolean */
    rc = SETTINGS_OK;
    if (table.python.kind != MT_UNSET
        && (table.python.kind != MT_STRING || table.python.string[0] == '\0'))
        rc = SETTINGS_HAND_OFF;
    if (table.preload.kind != MT_UNSET) {
        if (table.preload.kind != MT_ARRAY)
            rc = SETTINGS_HAND_OFF;
        else
            for (i = 0; i < table.preload.array.count; i++)
                if (!settings_module_name(table.preload.array.items[i]))
                    rc = SETTINGS_HAND_OFF;
    }
    if (table.echo.kind != MT_UNSET && table.echo.kind != MT_BOOL)
        rc = SETTINGS_HAND_OFF;
    if (rc != SETTINGS_OK) {
        mt_table_free(&table);
        free(path);
        return rc;
    }
    project->path = path;
    project->python = table.python.string;  /* taken over */
    table.python.string = NULL;
    if (table.preload.kind == MT_ARRAY) {
        project->preload_set = 1;
        project->preload = table.preload.array;
        table.preload.array.items = NULL;
        table.preload.array.count = 0;
    }
    if (table.echo.kind == MT_BOOL)
        project->echo = table.echo.boolean;
    mt_table_free(&table);
    return SETTINGS_OK;
}

SETTINGS_API int find_project(const char *cwd, struct project *project)
{
    char *directory;

    memset(project, 0, sizeof *project);
    project->echo = -1;
    if (cwd == NULL || cwd[0] == '\0')
        return SETTINGS_OK;
    directory = settings_strndup(cwd, strlen(cwd));
    if (directory == NULL)
        return SETTINGS_HAND_OFF;
    for (;;) {  /* find_pyproject */
        char *candidate = settings_path_join(directory, "pyproject.toml"), *parent;
        int same;
        if (candidate == NULL) {
            free(directory);
            return SETTINGS_HAND_OFF;
        }
        if (settings_isfile(candidate)) {
            free(directory);
            return settings_load_project(candidate, project);
        }
        free(candidate);
        parent = settings_dirname(directory);
        if (parent == NULL) {
            free(directory);
            return SETTINGS_HAND_OFF;
        }
        same = strcmp(parent, directory) == 0;
        free(directory);
        if (same) {
            free(parent);
            return SETTINGS_OK;
        }
        directory = parent;
    }
}

/* --- the test-only program ----------------------------------------------------------- */
#ifdef PYRUST_SETTINGS_SELFTEST

static void selftest_string(const char *s)
{
    putchar('"');
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            printf("\\%c", c);
        else if (c < 0x20 || c == 0x7f)
            printf("\\u%04x", c);
        else
            putchar(c);
    }
    putchar('"');
}

static void selftest_optional(const char *s)
{
    if (s == NULL)
        fputs("null", stdout);
    else
        selftest_string(s);
}

static void selftest_list(const struct strlist *list)
{
    size_t i;
    putchar('[');
    for (i = 0; i < list->count; i++) {
        if (i)
            putchar(',');
        selftest_string(list->items[i]);
    }
    putchar(']');
}

static const char *selftest_status(int rc)
{
    return rc == SETTINGS_OK ? "ok" : rc == SETTINGS_ABSENT ? "absent" : "hand_off";
}

static void selftest_config(const char *path, int explicit)
{
    struct user_config config;
    int rc = read_config(path, explicit, &config);
    printf("{\"status\":\"%s\",\"socket\":", selftest_status(rc));
    selftest_optional(config.socket);
    fputs(",\"python\":", stdout);
    selftest_optional(config.python);
    fputs(",\"preload\":", stdout);
    selftest_list(&config.preload);
    printf(",\"echo\":%s,\"autostart\":%s}\n", config.echo ? "true" : "false",
           config.autostart ? "true" : "false");
    free_user_config(&config);
}

static void selftest_project(const char *cwd)
{
    struct project project;
    int rc = find_project(cwd, &project);
    printf("{\"status\":\"%s\",\"path\":", selftest_status(rc));
    selftest_optional(project.path);
    fputs(",\"python\":", stdout);
    selftest_optional(project.python);
    printf(",\"preload_set\":%s,\"preload\":", project.preload_set ? "true" : "false");
    selftest_list(&project.preload);
    printf(",\"echo\":%d}\n", project.echo);
    free_project(&project);
}

static void selftest_mt_value(const char *name, const struct mt_value *value, int *first)
{
    if (value->kind == MT_UNSET)
        return;
    printf("%s\"%s\":", *first ? "" : ",", name);
    *first = 0;
    if (value->kind == MT_STRING)
        selftest_string(value->string);
    else if (value->kind == MT_BOOL)
        fputs(value->boolean ? "true" : "false", stdout);
    else
        selftest_list(&value->array);
}

/* The port of minitoml.read itself, on the file's text. */
static void selftest_minitoml(const char *path)
{
    static const char *const why[] = { "ok", "unsupported", "limit", "nomem" };
    struct mt_table table;
    char *data;
    size_t size;
    int rc, first = 1;
    if (settings_read_file(path, SETTINGS_MAX_PYPROJECT, &data, &size) != 0) {
        puts("{\"result\":\"unreadable\"}");
        return;
    }
    if (!settings_utf8(data, size)) {
        free(data);
        puts("{\"result\":\"not utf-8\"}");
        return;
    }
    rc = mt_read(data, settings_crlf(data, size), &table);
    free(data);
    if (rc != MT_OK) {
        printf("{\"result\":\"%s\"}\n", why[rc]);
        return;
    }
    if (!table.found) {
        puts("{\"result\":\"none\"}");
        return;
    }
    fputs("{\"result\":\"table\",\"table\":{", stdout);
    selftest_mt_value("python", &table.python, &first);
    selftest_mt_value("preload", &table.preload, &first);
    selftest_mt_value("echo", &table.echo, &first);
    puts("}}");
    mt_table_free(&table);
}

static void selftest_interpreter(const char *value, const char *base)
{
    char *path = interpreter_path(value, base);
    selftest_optional(path);
    putchar('\n');
    free(path);
}

static void selftest_expand(const char *path)
{
    char *expanded = expand_user(path);
    selftest_optional(expanded);
    putchar('\n');
    free(expanded);
}

/* One command: config PATH [explicit] | project [CWD] | minitoml FILE | expand PATH |
 * interpreter VALUE BASE. */
static int selftest_command(int argc, char **argv)
{
    if (argc >= 2 && argc <= 3 && strcmp(argv[0], "config") == 0)
        selftest_config(argv[1], argc == 3 && strcmp(argv[2], "explicit") == 0);
    else if (argc <= 2 && strcmp(argv[0], "project") == 0)
        selftest_project(argc == 2 ? argv[1] : NULL);
    else if (argc == 2 && strcmp(argv[0], "minitoml") == 0)
        selftest_minitoml(argv[1]);
    else if (argc == 2 && strcmp(argv[0], "expand") == 0)
        selftest_expand(argv[1]);
    else if (argc == 3 && strcmp(argv[0], "interpreter") == 0)
        selftest_interpreter(argv[1], argv[2]);
    else
        return -1;
    return 0;
}

/* `selftest COMMAND ARGS...`, or no arguments: one command a line on stdin,
 * its arguments separated by tabs, one answer a line (flushed). */
int main(int argc, char **argv)
{
    static char line[65536];
    if (argc > 1)
        return selftest_command(argc - 1, argv + 1) == 0 ? 0 : 2;
    while (fgets(line, sizeof line, stdin) != NULL) {
        char *fields[4];
        int count = 0;
        char *p = line, *tab;
        line[strcspn(line, "\n")] = '\0';
        for (;;) {
            fields[count++] = p;
            tab = strchr(p, '\t');
            if (tab == NULL || count == 4)
                break;
            *tab = '\0';
            p = tab + 1;
        }
        if (selftest_command(count, fields) != 0)
            puts("{\"error\":\"bad command\"}");
        fflush(stdout);
    }
    return 0;
}
#endif
