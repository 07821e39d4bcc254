/* SHA-256 (FIPS 180-4), for the C test to compare tensor bytes with the spec vectors'
 * "sha256" without a crypto library. Not for use outside the tests. */
#ifndef ENCT_TEST_SHA256_H
#define ENCT_TEST_SHA256_H

#include <stddef.h>
#include <stdint.h>

/* Writes the 64 lowercase hex digits of SHA-256(data) and a NUL to hex (65 bytes). */
void sha256_hex(const uint8_t *data, size_t len, char hex[65]);

#endif
