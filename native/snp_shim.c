/*
 * skr SEV-SNP shim: open /dev/sev-guest, issue one guest-request ioctl, close.
 *
 * Why C and not ctypes/struct packing in Python: the kernel structures have padding (after
 * msg_version, after certs_len) and a union; the compiler lays them out exactly as the kernel
 * expects, and the _Static_asserts below stop the build if a header ever disagrees with the
 * layout this code relies on.
 *
 * Every entry point
 *   - validates its arguments again (the Python wrapper already did; this is defence in depth),
 *   - opens the device with O_RDWR | O_CLOEXEC,
 *   - issues exactly one ioctl (restarted only on EINTR),
 *   - closes the descriptor on every path before returning,
 *   - wipes its stack copies of request and response,
 *   - reports errno, firmware error and VMM error separately in struct skr_snp_status.
 * Retries on VMM BUSY and the extended-report size protocol are policy and live in Python.
 */
#define _DEFAULT_SOURCE
#include "snp_shim.h"

#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <linux/sev-guest.h>

#pragma GCC diagnostic error "-Wall"
#pragma GCC diagnostic error "-Wextra"
#pragma GCC diagnostic error "-Wconversion"
#pragma GCC diagnostic error "-Wsign-conversion"

#ifndef SKR_NATIVE_VERSION
#error "SKR_NATIVE_VERSION must be defined by the build (native/build_snp.py)"
#endif

/* --- the layout this file relies on (include/uapi/linux/sev-guest.h) ----------------------- */

_Static_assert(sizeof(struct snp_report_req) == 96, "snp_report_req is 96 bytes");
_Static_assert(offsetof(struct snp_report_req, user_data) == 0, "user_data at 0");
_Static_assert(sizeof(((struct snp_report_req *)0)->user_data) == SKR_SNP_USER_DATA_LEN,
               "user_data is 64 bytes");
_Static_assert(offsetof(struct snp_report_req, vmpl) == 64, "vmpl at 64");
_Static_assert(offsetof(struct snp_report_req, rsvd) == 68, "rsvd at 68");

_Static_assert(sizeof(struct snp_report_resp) == SKR_SNP_REPORT_RESP_LEN,
               "snp_report_resp is 4000 bytes");

_Static_assert(sizeof(struct snp_derived_key_req) == 32, "snp_derived_key_req is 32 bytes");
_Static_assert(offsetof(struct snp_derived_key_req, root_key_select) == 0, "root_key_select at 0");
_Static_assert(offsetof(struct snp_derived_key_req, guest_field_select) == 8,
               "guest_field_select at 8");
_Static_assert(offsetof(struct snp_derived_key_req, vmpl) == 16, "vmpl at 16");
_Static_assert(offsetof(struct snp_derived_key_req, guest_svn) == 20, "guest_svn at 20");
_Static_assert(offsetof(struct snp_derived_key_req, tcb_version) == 24, "tcb_version at 24");
_Static_assert(sizeof(struct snp_derived_key_resp) == SKR_SNP_DERIVED_KEY_RESP_LEN,
               "snp_derived_key_resp is 64 bytes");

_Static_assert(sizeof(struct snp_guest_request_ioctl) == 32, "snp_guest_request_ioctl is 32 bytes");
_Static_assert(offsetof(struct snp_guest_request_ioctl, msg_version) == 0, "msg_version at 0");
_Static_assert(offsetof(struct snp_guest_request_ioctl, req_data) == 8, "req_data at 8");
_Static_assert(offsetof(struct snp_guest_request_ioctl, resp_data) == 16, "resp_data at 16");
_Static_assert(offsetof(struct snp_guest_request_ioctl, exitinfo2) == 24, "exitinfo2 at 24");

_Static_assert(sizeof(struct snp_ext_report_req) == 112, "snp_ext_report_req is 112 bytes");
_Static_assert(offsetof(struct snp_ext_report_req, data) == 0, "data at 0");
_Static_assert(offsetof(struct snp_ext_report_req, certs_address) == 96, "certs_address at 96");
_Static_assert(offsetof(struct snp_ext_report_req, certs_len) == 104, "certs_len at 104");

#if defined(__x86_64__) || defined(__aarch64__)
/* The generic _IOC encoding: dir 3 (read|write) << 30, size 32 << 16, type 'S' << 8, nr. */
_Static_assert(SNP_GET_REPORT == 0xC0205300u, "SNP_GET_REPORT encoding");
_Static_assert(SNP_GET_DERIVED_KEY == 0xC0205301u, "SNP_GET_DERIVED_KEY encoding");
_Static_assert(SNP_GET_EXT_REPORT == 0xC0205302u, "SNP_GET_EXT_REPORT encoding");
#endif

/* MSG_REPORT_REQ / MSG_KEY_REQ version 1 (the kernel rejects 0 with EINVAL). */
#define SKR_SNP_MSG_VERSION 1

const char *skr_snp_native_version(void) { return SKR_NATIVE_VERSION; }

static void reset_status(struct skr_snp_status *status) {
    status->stage = SKR_SNP_STAGE_OK;
    status->err = 0;
    status->fw_error = 0;
    status->vmm_error = 0;
    status->certs_len = 0;
}

static int refuse(struct skr_snp_status *status) {
    status->stage = SKR_SNP_STAGE_ARGUMENT;
    status->err = EINVAL;
    return -1;
}

/*
 * Open, ioctl, close. The request's exitinfo2 is zeroed first: the kernel writes it back only
 * when it is non-zero, so a stale value can never be mistaken for a firmware error.
 */
static int guest_request(const char *path, unsigned long command,
                         struct snp_guest_request_ioctl *request, struct skr_snp_status *status) {
    int fd;
    int rc;
    int saved_errno = 0;

    do {
        fd = open(path, O_RDWR | O_CLOEXEC);
    } while (fd < 0 && errno == EINTR);
    if (fd < 0) {
        status->stage = SKR_SNP_STAGE_OPEN;
        status->err = errno;
        return -1;
    }

    do {
        request->exitinfo2 = 0;
        rc = ioctl(fd, command, request);
    } while (rc < 0 && errno == EINTR);
    if (rc < 0) {
        saved_errno = errno;
    }

    /* Linux releases the descriptor even when close() reports an error; never retry it. */
    (void)close(fd);

    status->fw_error = (uint32_t)(request->exitinfo2 & 0xFFFFFFFFu);
    status->vmm_error = (uint32_t)(request->exitinfo2 >> 32);
    if (rc < 0) {
        status->stage = SKR_SNP_STAGE_IOCTL;
        status->err = saved_errno;
        return -1;
    }
    return 0;
}

int skr_snp_get_report(const char *path, const uint8_t *user_data, uint32_t vmpl,
                       uint8_t *resp, size_t resp_len, struct skr_snp_status *status) {
    struct snp_report_req req;
    struct snp_report_resp out;
    struct snp_guest_request_ioctl request;
    int rc;

    if (status == NULL) {
        return -1;
    }
    reset_status(status);
    if (path == NULL || user_data == NULL || resp == NULL || resp_len != sizeof(out.data) ||
        vmpl > SKR_SNP_MAX_VMPL) {
        return refuse(status);
    }

    memset(&req, 0, sizeof(req));
    memset(&out, 0, sizeof(out));
    memset(&request, 0, sizeof(request));
    memcpy(req.user_data, user_data, sizeof(req.user_data));
    req.vmpl = vmpl;
    request.msg_version = SKR_SNP_MSG_VERSION;
    request.req_data = (__u64)(uintptr_t)&req;
    request.resp_data = (__u64)(uintptr_t)&out;

    rc = guest_request(path, SNP_GET_REPORT, &request, status);
    if (rc == 0) {
        memcpy(resp, out.data, sizeof(out.data));
    }
    explicit_bzero(&out, sizeof(out));
    explicit_bzero(&req, sizeof(req));
    return rc;
}

int skr_snp_get_ext_report(const char *path, const uint8_t *user_data, uint32_t vmpl,
                           uint8_t *resp, size_t resp_len, uint8_t *certs, uint32_t certs_len,
                           struct skr_snp_status *status) {
    struct snp_ext_report_req req;
    struct snp_report_resp out;
    struct snp_guest_request_ioctl request;
    int rc;

    if (status == NULL) {
        return -1;
    }
    reset_status(status);
    if (path == NULL || user_data == NULL || resp == NULL || resp_len != sizeof(out.data) ||
        vmpl > SKR_SNP_MAX_VMPL || certs == NULL || certs_len == 0 ||
        certs_len % SKR_SNP_CERTS_PAGE != 0 || certs_len > SKR_SNP_MAX_CERTS_LEN) {
        return refuse(status);
    }

    memset(&req, 0, sizeof(req));
    memset(&out, 0, sizeof(out));
    memset(&request, 0, sizeof(request));
    memcpy(req.data.user_data, user_data, sizeof(req.data.user_data));
    req.data.vmpl = vmpl;
    req.certs_address = (__u64)(uintptr_t)certs;
    req.certs_len = certs_len;
    request.msg_version = SKR_SNP_MSG_VERSION;
    request.req_data = (__u64)(uintptr_t)&req;
    request.resp_data = (__u64)(uintptr_t)&out;

    rc = guest_request(path, SNP_GET_EXT_REPORT, &request, status);
    /* On SNP_GUEST_VMM_ERR_INVALID_LEN the kernel wrote the length it needs into certs_len. */
    status->certs_len = req.certs_len;
    if (rc == 0) {
        memcpy(resp, out.data, sizeof(out.data));
    }
    explicit_bzero(&out, sizeof(out));
    explicit_bzero(&req, sizeof(req));
    return rc;
}

int skr_snp_get_derived_key(const char *path, uint32_t root_key_select,
                            uint64_t guest_field_select, uint32_t vmpl, uint32_t guest_svn,
                            uint64_t tcb_version, uint8_t *resp, size_t resp_len,
                            struct skr_snp_status *status) {
    struct snp_derived_key_req req;
    struct snp_derived_key_resp out;
    struct snp_guest_request_ioctl request;
    int rc;

    if (status == NULL) {
        return -1;
    }
    reset_status(status);
    if (path == NULL || resp == NULL || resp_len != sizeof(out.data) || vmpl > SKR_SNP_MAX_VMPL ||
        root_key_select > 7u) {
        return refuse(status);
    }

    memset(&req, 0, sizeof(req));
    memset(&out, 0, sizeof(out));
    memset(&request, 0, sizeof(request));
    req.root_key_select = root_key_select;
    req.guest_field_select = guest_field_select;
    req.vmpl = vmpl;
    req.guest_svn = guest_svn;
    req.tcb_version = tcb_version;
    request.msg_version = SKR_SNP_MSG_VERSION;
    request.req_data = (__u64)(uintptr_t)&req;
    request.resp_data = (__u64)(uintptr_t)&out;

    rc = guest_request(path, SNP_GET_DERIVED_KEY, &request, status);
    if (rc == 0) {
        memcpy(resp, out.data, sizeof(out.data));
    }
    /* The response holds a secret key: wipe our copy whatever happened. */
    explicit_bzero(&out, sizeof(out));
    explicit_bzero(&req, sizeof(req));
    return rc;
}
