/* The C-ABI side of bench_capi.py: opens an enctensor file and decrypts every tensor into
 * fresh buffers in one enct_read_tensors call; prints the seconds this took (open and
 * allocation included, process start-up excluded) and the bytes read.
 *   capi_load <file> <64 hex digits of the key> malloc|populate
 * malloc: posix_memalign (64), pages faulted in as the plaintext is written (what a TVM
 * runtime allocation gives); populate: anonymous 4 KiB mappings faulted in beforehand with
 * MADV_POPULATE_WRITE on two threads (what enctensor.load does by default, _alloc.py). */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#include "enctensor.h"

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

typedef struct {
    void **dsts;
    size_t *lens;
    size_t n, first;
} populate_job;

/* Faults in every other destination, from `first`. */
static void *populate(void *arg) {
    populate_job *job = arg;
    for (size_t i = job->first; i < job->n; i += 2)
        if (job->lens[i] && madvise(job->dsts[i], job->lens[i], MADV_POPULATE_WRITE)) memset(job->dsts[i], 0, job->lens[i]);
    return NULL;
}

int main(int argc, char **argv) {
    uint8_t key[32];
    for (int i = 0; i < 32; i++)
        if (argc != 4 || sscanf(argv[2] + 2 * i, "%2hhx", &key[i]) != 1) return 2;
    int populated = !strcmp(argv[3], "populate");
    double t0 = now();
    enct_credential *cred = NULL;
    enct_reader *r = NULL;
    if (enct_credential_key(key, 32, &cred) || enct_open_path(argv[1], cred, NULL, &r)) {
        fprintf(stderr, "%s\n", enct_last_error());
        return 1;
    }
    size_t n = 0;
    enct_tensor_count(r, &n);
    size_t *idx = malloc(n * sizeof *idx), *lens = malloc(n * sizeof *lens);
    void **dsts = malloc(n * sizeof *dsts);
    unsigned long long total = 0;
    for (size_t i = 0; i < n; i++) {
        enct_tensor_info t;
        enct_describe_tensor(r, i, &t);
        idx[i] = i;
        lens[i] = t.nbytes;
        total += t.nbytes;
        if (populated) {
            dsts[i] = mmap(NULL, t.nbytes ? t.nbytes : 1, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            if (dsts[i] == MAP_FAILED) return 1;
            madvise(dsts[i], t.nbytes ? t.nbytes : 1, MADV_NOHUGEPAGE);
        } else if (posix_memalign(&dsts[i], 64, t.nbytes ? t.nbytes : 64)) {
            return 1;
        }
    }
    if (populated) {
        populate_job jobs[2] = {{dsts, lens, n, 0}, {dsts, lens, n, 1}};
        pthread_t other;
        pthread_create(&other, NULL, populate, &jobs[1]);
        populate(&jobs[0]);
        pthread_join(other, NULL);
    }
    if (enct_read_tensors(r, idx, (void *const *)dsts, lens, n)) {
        fprintf(stderr, "%s\n", enct_last_error());
        return 1;
    }
    double dt = now() - t0;
    enct_close(r);
    enct_credential_free(cred);
    for (size_t i = 0; i < n; i++) {
        if (populated)
            munmap(dsts[i], lens[i] ? lens[i] : 1);
        else
            free(dsts[i]);
    }
    free(idx);
    free(lens);
    free(dsts);
    printf("%.6f %llu\n", dt, total);
    return 0;
}
