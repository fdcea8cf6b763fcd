/* Reads the attributes of the key objects labelled argv[3]-v* on the token labelled argv[2] through the module
 * argv[1] (PIN from $KEKD_TEST_PIN), one line per object: label, CKA_TOKEN, CKA_SENSITIVE, CKA_EXTRACTABLE,
 * CKA_VALUE_LEN and what C_GetAttributeValue says for CKA_VALUE. Test-only: an independent reader of what kekctl
 * created. */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <p11-kit-1/p11-kit/pkcs11.h>

int main(int argc, char **argv) {
    if (argc != 4) return 2;
    void *lib = dlopen(argv[1], RTLD_NOW);
    if (!lib) return 3;
    CK_FUNCTION_LIST *f;
    ((CK_C_GetFunctionList)dlsym(lib, "C_GetFunctionList"))(&f);
    if (f->C_Initialize(NULL) != CKR_OK) return 4;
    CK_SLOT_ID slots[16]; CK_ULONG n = 16;
    f->C_GetSlotList(CK_TRUE, slots, &n);
    for (CK_ULONG i = 0; i < n; i++) {
        CK_TOKEN_INFO info; f->C_GetTokenInfo(slots[i], &info);
        if (strncmp((char *)info.label, argv[2], strlen(argv[2])) != 0) continue;
        CK_SESSION_HANDLE s; f->C_OpenSession(slots[i], CKF_SERIAL_SESSION, NULL, NULL, &s);
        const char *pin = getenv("KEKD_TEST_PIN");
        if (f->C_Login(s, CKU_USER, (CK_UTF8CHAR_PTR)pin, strlen(pin)) != CKR_OK) return 5;
        CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
        CK_ATTRIBUTE find = {CKA_CLASS, &cls, sizeof cls};
        f->C_FindObjectsInit(s, &find, 1);
        CK_OBJECT_HANDLE objs[64]; CK_ULONG found = 0;
        f->C_FindObjects(s, objs, 64, &found);
        f->C_FindObjectsFinal(s);
        for (CK_ULONG j = 0; j < found; j++) {
            char label[128] = {0}; CK_BBOOL token = 0, sensitive = 0, extractable = 1; CK_ULONG len = 0;
            CK_ATTRIBUTE a[] = {{CKA_LABEL, label, sizeof label - 1}, {CKA_TOKEN, &token, 1}, {CKA_SENSITIVE, &sensitive, 1},
                                {CKA_EXTRACTABLE, &extractable, 1}, {CKA_VALUE_LEN, &len, sizeof len}};
            f->C_GetAttributeValue(s, objs[j], a, 5);
            label[a[0].ulValueLen] = 0;
            unsigned char value[64]; CK_ATTRIBUTE v = {CKA_VALUE, value, sizeof value};
            CK_RV rv = f->C_GetAttributeValue(s, objs[j], &v, 1);
            printf("%s token=%d sensitive=%d extractable=%d len=%lu value=%s\n", label, token, sensitive, extractable, len,
                   rv == CKR_ATTRIBUTE_SENSITIVE ? "CKR_ATTRIBUTE_SENSITIVE" : rv == CKR_OK ? "READABLE" : "OTHER");
        }
    }
    f->C_Finalize(NULL);
    return 0;
}
