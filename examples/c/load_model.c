/* Decrypts every tensor of an enctensor file: load_model model.enct key.hex */
#include <stdio.h>
#include <stdlib.h>
#include "enctensor.h"

int main(int argc, char **argv) {
    uint8_t key[32]; /* `enctensor keygen key.hex` writes it as 64 hex digits */
    FILE *f = argc == 3 ? fopen(argv[2], "r") : NULL;
    for (int i = 0; i < 32; i++)
        if (!f || fscanf(f, "%2hhx", &key[i]) != 1) return 2;
    enct_credential *cred = NULL;
    enct_reader *r = NULL;
    if (enct_credential_key(key, 32, &cred) || enct_open_path(argv[1], cred, NULL, &r)) {
        fprintf(stderr, "%s\n", enct_last_error()); /* e.g. ENCT_ERR_WRONG_KEY, ENCT_ERR_INTEGRITY */
        return 1;
    }
    enct_credential_free(cred); /* wipes its copy of the key */
    size_t n = 0;
    enct_tensor_count(r, &n);
    for (size_t i = 0; i < n; i++) {
        enct_tensor_info t;
        enct_describe_tensor(r, i, &t);
        void *data = malloc(t.nbytes ? t.nbytes : 1); /* or a DLTensor's data */
        if (enct_read_tensor(r, i, data, t.nbytes)) return fprintf(stderr, "%s\n", enct_last_error()), 1;
        printf("%s %s %llu bytes\n", t.name, t.dtype, (unsigned long long)t.nbytes);
        free(data);
    }
    enct_close(r); /* unmaps the file, wipes the file key */
    return 0;
}
