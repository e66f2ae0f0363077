/*
 * Replays a fuzz target's corpus without libFuzzer, so that `make check`
 * runs every saved input in every build (gcc, clang, sanitizers or not).
 * Linked with one target's source; KOU_FUZZ_CORPUS names its corpus.
 *
 *   replay_X              every file of the corpus directory
 *   replay_X PATH...      these files, or every file of these directories
 *                         (to reproduce a crash file libFuzzer saved)
 *
 * A finding aborts inside the target; the name of the input being run is
 * printed before it, so the log says which one. Exit status: 0 when every
 * input ran, 1 when one could not be read or there was none at all (an
 * empty corpus would make the test pass without testing anything).
 */

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "fuzz.h"

#ifndef KOU_FUZZ_CORPUS
#error "KOU_FUZZ_CORPUS must name the corpus directory"
#endif

static int
kou_replay_file(const char *path)
{
    FILE          *f;
    unsigned char *data;
    long           size;
    size_t         got;

    f = fopen(path, "rb");
    if (f == NULL) {
        fprintf(stderr, "replay: %s: %s\n", path, strerror(errno));
        return -1;
    }
    if (fseek(f, 0, SEEK_END) != 0 || (size = ftell(f)) < 0
        || fseek(f, 0, SEEK_SET) != 0)
    {
        fprintf(stderr, "replay: %s: cannot find its size\n", path);
        fclose(f);
        return -1;
    }
    /* exactly the input's size, so that ASan sees a read past its end */
    data = malloc(size > 0 ? (size_t) size : 1);
    if (data == NULL) {
        fprintf(stderr, "replay: %s: out of memory\n", path);
        fclose(f);
        return -1;
    }
    got = fread(data, 1, (size_t) size, f);
    fclose(f);
    if (got != (size_t) size) {
        fprintf(stderr, "replay: %s: short read\n", path);
        free(data);
        return -1;
    }

    printf("%s (%ld bytes)\n", path, size);
    fflush(stdout);
    LLVMFuzzerTestOneInput(data, (size_t) size);
    free(data);
    return 0;
}

/* Every regular file of dir in name order; returns files run, or -1. */
static int
kou_replay_dir(const char *dir)
{
    struct dirent **names;
    struct stat     st;
    char            path[4096];
    int             n, i, ran = 0, rc = 0;

    n = scandir(dir, &names, NULL, alphasort);
    if (n < 0) {
        fprintf(stderr, "replay: %s: %s\n", dir, strerror(errno));
        return -1;
    }
    for (i = 0; i < n; i++) {
        if (names[i]->d_name[0] != '.' && rc == 0) {
            snprintf(path, sizeof(path), "%s/%s", dir, names[i]->d_name);
            if (stat(path, &st) == 0 && S_ISREG(st.st_mode)) {
                if (kou_replay_file(path) != 0) {
                    rc = -1;
                }
                ran++;
            }
        }
        free(names[i]);
    }
    free(names);
    return rc == 0 ? ran : -1;
}

static int
kou_replay_path(const char *path)
{
    struct stat st;

    if (stat(path, &st) != 0) {
        fprintf(stderr, "replay: %s: %s\n", path, strerror(errno));
        return -1;
    }
    if (S_ISDIR(st.st_mode)) {
        return kou_replay_dir(path);
    }
    return kou_replay_file(path) == 0 ? 1 : -1;
}

int
main(int argc, char **argv)
{
    int i, n, total = 0;

    if (argc < 2) {
        n = kou_replay_path(KOU_FUZZ_CORPUS);
        if (n < 0) {
            return 1;
        }
        total = n;
    }
    for (i = 1; i < argc; i++) {
        n = kou_replay_path(argv[i]);
        if (n < 0) {
            return 1;
        }
        total += n;
    }
    if (total == 0) {
        fprintf(stderr, "replay: no input to run\n");
        return 1;
    }
    printf("replayed %d inputs\n", total);
    return 0;
}
