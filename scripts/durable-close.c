/* Loaded into DCMTK storescp by scripts/bench-ingest.sh (LD_PRELOAD), to give the node a peer
 * that keeps the same promise: storescp has no option to make a received file durable before it
 * answers, and it closes each file it writes before it sends the response. So every stream it
 * closes for writing is first made durable, the file's data and size (fdatasync) and its
 * directory entry (fsync of the directory), one file at a time, as a simple durable SCP would.
 * A file that cannot be made durable fails its fclose, as a failed write would. With
 * DURABLE_CLOSE_COUNT=FILE set, a byte is appended to FILE for each file made durable, so the
 * benchmark can check that the library did its work.
 * Build: cc -shared -fPIC -O2 -o durable-close.so scripts/durable-close.c -ldl */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

/* storescp is single-threaded; a child forked per association opens its own descriptor. */
static void count_one(void) {
    int saved = errno;
    static int fd = -2;
    if (fd == -2) {
        const char *path = getenv("DURABLE_CLOSE_COUNT");
        fd = path ? open(path, O_WRONLY | O_APPEND | O_CREAT, 0644) : -1;
    }
    if (fd >= 0 && write(fd, "x", 1) != 1) {
        /* A count short of the files sent fails the benchmark, which is what this is for. */
    }
    errno = saved;
}

int fclose(FILE *f) {
    static int (*real_fclose)(FILE *);
    if (!real_fclose) real_fclose = (int (*)(FILE *))dlsym(RTLD_NEXT, "fclose");
    int fd = fileno(f);
    int flags = fd >= 0 ? fcntl(fd, F_GETFL) : -1;
    if (flags < 0 || (flags & O_ACCMODE) == O_RDONLY) return real_fclose(f);
    /* Durable means all three succeeded; a failure is storescp's failure to write the file. */
    int durable = fflush(f) == 0 && fdatasync(fd) == 0;
    if (durable) {
        char link[64], path[PATH_MAX];
        snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
        ssize_t n = readlink(link, path, sizeof path);
        durable = n > 0 && n < (ssize_t)sizeof path;
        if (durable) {
            path[n] = '\0';
            int dir = open(dirname(path), O_RDONLY | O_DIRECTORY);
            durable = dir >= 0 && fsync(dir) == 0;
            if (dir >= 0) close(dir);
        }
    }
    if (durable) count_one();
    int closed = real_fclose(f);
    return durable ? closed : EOF;
}
