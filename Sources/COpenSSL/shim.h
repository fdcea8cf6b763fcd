#ifndef KEKD_COPENSSL_SHIM_H
#define KEKD_COPENSSL_SHIM_H
/* The SHA256_* context functions are deprecated in OpenSSL 3 in favour of EVP, but kept: outside FIPS mode the audit
   writer hashes through them (a context is a plain struct, copied without an allocation). Without this define each
   use is a compiler warning. */
#define OPENSSL_SUPPRESS_DEPRECATED
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/rand.h>
#include <openssl/sha.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <openssl/provider.h>
#endif
