/* A PKCS#11 module that forwards every call to the real module named by $KEKD_SHIM_TARGET (SoftHSM in the tests)
 * and appends the name of each cryptographic call (C_EncryptInit/C_Encrypt/..., C_WrapKey/C_UnwrapKey, sign/
 * verify/digest) to $KEKD_SHIM_COUNT_FILE. It proves from outside kekd how often kekd made the token work.
 * $KEKD_SHIM_DECRYPT_DELAY_MS makes every C_Decrypt take that much longer: a stalled token.
 * Built by Tests/Interop/test_pkcs11_backend.py with `cc -shared`; test-only. */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <p11-kit-1/p11-kit/pkcs11.h>

static CK_FUNCTION_LIST *real;
static CK_FUNCTION_LIST shim;

static void count(const char *name) {
    const char *path = getenv("KEKD_SHIM_COUNT_FILE");
    if (!path) return;
    FILE *f = fopen(path, "a");
    if (!f) return;
    fprintf(f, "%s\n", name);
    fclose(f);
}

#define FORWARD(name, params, args) \
    static CK_RV shim_##name params { count(#name); return real->name args; }

FORWARD(C_EncryptInit, (CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE k), (s, m, k))
FORWARD(C_Encrypt, (CK_SESSION_HANDLE s, CK_BYTE_PTR d, CK_ULONG n, CK_BYTE_PTR o, CK_ULONG_PTR on), (s, d, n, o, on))
FORWARD(C_EncryptUpdate, (CK_SESSION_HANDLE s, CK_BYTE_PTR d, CK_ULONG n, CK_BYTE_PTR o, CK_ULONG_PTR on), (s, d, n, o, on))
FORWARD(C_DecryptInit, (CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE k), (s, m, k))
static CK_RV shim_C_Decrypt(CK_SESSION_HANDLE s, CK_BYTE_PTR d, CK_ULONG n, CK_BYTE_PTR o, CK_ULONG_PTR on) {
    count("C_Decrypt");
    const char *delay = getenv("KEKD_SHIM_DECRYPT_DELAY_MS");
    long ms = delay ? atol(delay) : 0;
    if (ms > 0 && o) {  /* the call that decrypts, not a length query */
        struct timespec t = { ms / 1000, (ms % 1000) * 1000000L };
        while (nanosleep(&t, &t) != 0) {}
    }
    return real->C_Decrypt(s, d, n, o, on);
}
FORWARD(C_DecryptUpdate, (CK_SESSION_HANDLE s, CK_BYTE_PTR d, CK_ULONG n, CK_BYTE_PTR o, CK_ULONG_PTR on), (s, d, n, o, on))
FORWARD(C_WrapKey, (CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE w, CK_OBJECT_HANDLE k, CK_BYTE_PTR o, CK_ULONG_PTR on),
        (s, m, w, k, o, on))
FORWARD(C_UnwrapKey, (CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE u, CK_BYTE_PTR w, CK_ULONG wn,
                      CK_ATTRIBUTE_PTR t, CK_ULONG tn, CK_OBJECT_HANDLE_PTR k), (s, m, u, w, wn, t, tn, k))
FORWARD(C_SignInit, (CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE k), (s, m, k))
FORWARD(C_VerifyInit, (CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE k), (s, m, k))
FORWARD(C_DigestInit, (CK_SESSION_HANDLE s, CK_MECHANISM_PTR m), (s, m))
FORWARD(C_DeriveKey, (CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE b, CK_ATTRIBUTE_PTR t, CK_ULONG tn,
                      CK_OBJECT_HANDLE_PTR k), (s, m, b, t, tn, k))

CK_RV C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR out) {
    const char *target = getenv("KEKD_SHIM_TARGET");
    void *lib = target ? dlopen(target, RTLD_NOW | RTLD_LOCAL) : NULL;
    if (!lib) return CKR_GENERAL_ERROR;
    CK_C_GetFunctionList get = (CK_C_GetFunctionList)dlsym(lib, "C_GetFunctionList");
    if (!get || get(&real) != CKR_OK) return CKR_GENERAL_ERROR;
    shim = *real;
    shim.C_EncryptInit = shim_C_EncryptInit; shim.C_Encrypt = shim_C_Encrypt; shim.C_EncryptUpdate = shim_C_EncryptUpdate;
    shim.C_DecryptInit = shim_C_DecryptInit; shim.C_Decrypt = shim_C_Decrypt; shim.C_DecryptUpdate = shim_C_DecryptUpdate;
    shim.C_WrapKey = shim_C_WrapKey; shim.C_UnwrapKey = shim_C_UnwrapKey; shim.C_SignInit = shim_C_SignInit;
    shim.C_VerifyInit = shim_C_VerifyInit; shim.C_DigestInit = shim_C_DigestInit; shim.C_DeriveKey = shim_C_DeriveKey;
    *out = &shim;
    return CKR_OK;
}
