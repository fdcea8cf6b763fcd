#ifndef KEKD_CPKCS11_SHIM_H
#define KEKD_CPKCS11_SHIM_H
// The PKCS#11 header from Debian's libp11-kit-dev (types only: the vendor module is dlopen'ed, libp11-kit is not linked).
#include <dlfcn.h>
#include <p11-kit-1/p11-kit/pkcs11.h>
#endif
