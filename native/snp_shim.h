/*
 * skr SEV-SNP shim: the only code that knows the kernel's sev-guest structures.
 *
 * Python (through cffi, API mode) sees the declarations between the cdef markers and nothing
 * else: one status struct of our own and three request functions. Every function opens the
 * device with O_CLOEXEC, issues one ioctl and closes the descriptor before it returns, on every
 * path, so no descriptor can leak and no state survives between calls.
 *
 * The region between "cdef-begin" and "cdef-end" is fed verbatim to ffi.cdef() by
 * native/build_snp.py, so it must stay plain C declarations (no macros, no attributes).
 */
#ifndef SKR_SNP_SHIM_H
#define SKR_SNP_SHIM_H

#include <stddef.h>
#include <stdint.h>

/* Which step of a call failed (skr_snp_status.stage). */
#define SKR_SNP_STAGE_OK 0       /* the ioctl returned 0 */
#define SKR_SNP_STAGE_ARGUMENT 1 /* the shim refused its arguments; nothing was opened */
#define SKR_SNP_STAGE_OPEN 2     /* open(2) of the device failed */
#define SKR_SNP_STAGE_IOCTL 3    /* ioctl(2) failed; fw_error / vmm_error say why */

#define SKR_SNP_USER_DATA_LEN 64          /* snp_report_req.user_data */
#define SKR_SNP_REPORT_RESP_LEN 4000      /* snp_report_resp.data (MSG_REPORT_RSP) */
#define SKR_SNP_DERIVED_KEY_RESP_LEN 64   /* snp_derived_key_resp.data (MSG_KEY_RSP) */
#define SKR_SNP_MAX_VMPL 3
#define SKR_SNP_CERTS_PAGE 4096           /* certs_len must be a multiple of this */
#define SKR_SNP_MAX_CERTS_LEN (1u << 20)  /* our cap on a certificate buffer (1 MiB) */

/* cdef-begin */
struct skr_snp_status {
    int32_t stage;       /* SKR_SNP_STAGE_* */
    int32_t err;         /* errno of the failing step; 0 on success */
    uint32_t fw_error;   /* exitinfo2 bits 31..0: SEV firmware status */
    uint32_t vmm_error;  /* exitinfo2 bits 63..32: hypervisor (VMM) error */
    uint32_t certs_len;  /* SNP_GET_EXT_REPORT: certs_len as the kernel left it */
};

const char *skr_snp_native_version(void);

int skr_snp_get_report(const char *path, const uint8_t *user_data, uint32_t vmpl,
                       uint8_t *resp, size_t resp_len, struct skr_snp_status *status);

int skr_snp_get_ext_report(const char *path, const uint8_t *user_data, uint32_t vmpl,
                           uint8_t *resp, size_t resp_len, uint8_t *certs, uint32_t certs_len,
                           struct skr_snp_status *status);

int skr_snp_get_derived_key(const char *path, uint32_t root_key_select,
                            uint64_t guest_field_select, uint32_t vmpl, uint32_t guest_svn,
                            uint64_t tcb_version, uint8_t *resp, size_t resp_len,
                            struct skr_snp_status *status);
/* cdef-end */

#endif /* SKR_SNP_SHIM_H */
