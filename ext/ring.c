/*
 * ustack poll-mode ring over a TAP queue.  See ring.h for the layout.
 *
 * Nothing here allocates after us_ring_open: bursts read into and write
 * from the pool mapped at open.  Errors that concern one frame are counted
 * and the burst goes on; errors that mean the device is gone end the burst
 * with -errno so that Python can raise.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <linux/if_tun.h>

#include "ring.h"

struct us_ring {
    int fd;
    int epfd;
    int vnet_hdr_len;
    int hugepages;
    unsigned int offloads;
    uint32_t slot_size;
    uint32_t rx_slots;
    uint32_t tx_slots;
    uint8_t *pool;
    size_t pool_bytes;
    uint32_t *rx_len;   /* [rx_slots] frame length of the last burst */
    uint32_t *tx_slot;  /* [tx_slots] slot index of each pending frame */
    uint32_t *tx_len;   /* [tx_slots] frame length of each pending frame */
    uint64_t counters[US_N_COUNTERS];
};

static void set_err(char *err, size_t errlen, const char *fmt, const char *arg, int e)
{
    if (err && errlen) {
        char msg[160];
        snprintf(msg, sizeof msg, fmt, arg);
        snprintf(err, errlen, "%s: %s", msg, strerror(e));
    }
    errno = e;
}

static int valid_ifname(const char *name)
{
    size_t n = strlen(name);
    if (n == 0 || n >= IFNAMSIZ)
        return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)name[i];
        if (c <= ' ' || c == '/' || c == ':' || c >= 0x7f)
            return 0;
    }
    return 1;
}

static void *map_pool(size_t bytes, int *huge)
{
    /* Hugepages spare TLB misses on a large pool; most machines have none
     * reserved, so failure is expected and silent. */
    size_t huge_bytes = (bytes + (2u << 20) - 1) & ~(size_t)((2u << 20) - 1);
    void *p = mmap(NULL, huge_bytes, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB | MAP_POPULATE, -1, 0);
    if (p != MAP_FAILED) {
        *huge = 1;
        return p;
    }
    *huge = 0;
    p = mmap(NULL, bytes, PROT_READ | PROT_WRITE,
             MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

static size_t pool_map_len(const struct us_ring *r)
{
    if (r->hugepages)
        return (r->pool_bytes + (2u << 20) - 1) & ~(size_t)((2u << 20) - 1);
    return r->pool_bytes;
}

struct us_ring *us_ring_open(const char *ifname, int flags, unsigned int offloads,
                             uint32_t rx_slots, uint32_t tx_slots, uint32_t slot_size,
                             char *err, size_t errlen)
{
    if (!valid_ifname(ifname)) {
        set_err(err, errlen, "bad interface name '%s'", ifname, EINVAL);
        return NULL;
    }
    if (rx_slots == 0 || tx_slots == 0 || slot_size < US_HEADROOM + 64 || slot_size % 64) {
        set_err(err, errlen, "bad pool geometry for '%s'", ifname, EINVAL);
        return NULL;
    }
    if (!(flags & US_OPEN_CREATE) && if_nametoindex(ifname) == 0) {
        set_err(err, errlen, "no TAP device '%s' in this network namespace", ifname, ENODEV);
        return NULL;
    }

    struct us_ring *r = calloc(1, sizeof *r);
    if (!r) {
        set_err(err, errlen, "ring for '%s'", ifname, ENOMEM);
        return NULL;
    }
    r->fd = -1;
    r->epfd = -1;
    r->slot_size = slot_size;
    r->rx_slots = rx_slots;
    r->tx_slots = tx_slots;
    r->vnet_hdr_len = (flags & US_OPEN_VNET_HDR) ? US_VNET_HDR_LEN : 0;
    int e;

    r->fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC);
    if (r->fd < 0) {
        e = errno;
        set_err(err, errlen, "cannot open /dev/net/tun for '%s'", ifname, e);
        goto fail;
    }
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    strncpy(ifr.ifr_name, ifname, IFNAMSIZ - 1);
    ifr.ifr_flags = IFF_TAP | IFF_NO_PI;
    if (flags & US_OPEN_MULTI_QUEUE)
        ifr.ifr_flags |= IFF_MULTI_QUEUE;
    if (flags & US_OPEN_VNET_HDR)
        ifr.ifr_flags |= IFF_VNET_HDR;
    if (ioctl(r->fd, TUNSETIFF, &ifr) < 0) {
        e = errno;
        set_err(err, errlen, "cannot attach to TAP '%s'", ifname, e);
        goto fail;
    }
    if (flags & US_OPEN_VNET_HDR) {
        int sz = US_VNET_HDR_LEN;
        if (ioctl(r->fd, TUNSETVNETHDRSZ, &sz) < 0) {
            e = errno;
            set_err(err, errlen, "cannot set vnet header size on '%s'", ifname, e);
            goto fail;
        }
    }
    /* Offload settings outlive the fd on a persistent TAP, so they are
     * always set, to 0 when off; otherwise a previous user's TSO setting
     * would hand us 64 KB frames with no header to describe them. */
    r->offloads = (flags & US_OPEN_VNET_HDR) ? offloads : 0;
    if (ioctl(r->fd, TUNSETOFFLOAD, (unsigned long)r->offloads) < 0) {
        e = errno;
        set_err(err, errlen, "cannot set offloads on '%s'", ifname, e);
        goto fail;
    }

    r->pool_bytes = (size_t)slot_size * (rx_slots + tx_slots);
    r->pool = map_pool(r->pool_bytes, &r->hugepages);
    if (!r->pool) {
        e = errno ? errno : ENOMEM;
        set_err(err, errlen, "cannot map buffer pool for '%s'", ifname, e);
        goto fail;
    }
    r->rx_len = calloc(rx_slots, sizeof *r->rx_len);
    r->tx_slot = calloc(tx_slots, sizeof *r->tx_slot);
    r->tx_len = calloc(tx_slots, sizeof *r->tx_len);
    if (!r->rx_len || !r->tx_slot || !r->tx_len) {
        set_err(err, errlen, "descriptor arrays for '%s'", ifname, ENOMEM);
        e = ENOMEM;
        goto fail;
    }

    r->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (r->epfd < 0) {
        e = errno;
        set_err(err, errlen, "epoll for '%s'", ifname, e);
        goto fail;
    }
    return r;

fail:
    us_ring_close(r);
    errno = e;
    return NULL;
}

void us_ring_close(struct us_ring *r)
{
    if (!r)
        return;
    if (r->epfd >= 0)
        close(r->epfd);
    if (r->fd >= 0)
        close(r->fd);
    if (r->pool)
        munmap(r->pool, pool_map_len(r));
    free(r->rx_len);
    free(r->tx_slot);
    free(r->tx_len);
    free(r);
}

void us_ring_info(const struct us_ring *r, struct us_ring_info *out)
{
    out->fd = r->fd;
    out->vnet_hdr_len = r->vnet_hdr_len;
    out->hugepages = r->hugepages;
    out->offloads = r->offloads;
    out->slot_size = r->slot_size;
    out->rx_slots = r->rx_slots;
    out->tx_slots = r->tx_slots;
    out->pool_bytes = r->pool_bytes;
}

int us_ring_set_offload(struct us_ring *r, unsigned int offloads)
{
    if (!r->vnet_hdr_len && offloads)
        return -EINVAL;
    if (ioctl(r->fd, TUNSETOFFLOAD, (unsigned long)offloads) < 0)
        return -errno;
    r->offloads = offloads;
    return 0;
}

uint8_t *us_ring_pool(struct us_ring *r) { return r->pool; }
uint64_t *us_ring_counters(struct us_ring *r) { return r->counters; }
uint32_t *us_ring_rx_len(struct us_ring *r) { return r->rx_len; }
uint32_t *us_ring_tx_slot(struct us_ring *r) { return r->tx_slot; }
uint32_t *us_ring_tx_len(struct us_ring *r) { return r->tx_len; }

/* The device was deleted or the queue detached: no later read can succeed. */
static int device_gone(int e)
{
    return e == EBADFD || e == EIO || e == ENXIO || e == ENODEV || e == EBADF;
}

int us_rx_burst(struct us_ring *r, uint32_t max)
{
    uint64_t *c = r->counters;
    if (max > r->rx_slots)
        max = r->rx_slots;
    const size_t cap = r->slot_size - US_HEADROOM + r->vnet_hdr_len;
    const int vlen = r->vnet_hdr_len;
    uint8_t *slot = r->pool + US_HEADROOM - vlen;
    uint32_t n = 0;
    uint64_t bytes = 0;
    /* Bad frames do not fill a slot; bound the reads so that a stream of
     * them cannot keep the burst going forever. */
    uint32_t reads_left = 2 * max + 8;

    c[US_RX_BURSTS]++;
    while (n < max && reads_left--) {
        c[US_RX_READS]++;
        ssize_t got = read(r->fd, slot, cap);
        if (got < 0) {
            int e = errno;
            if (e == EAGAIN) {
                c[US_RX_EAGAIN]++;
                break;
            }
            if (e == EINTR)
                break;
            if (device_gone(e)) {
                c[US_DROP_RX_ERROR]++;
                c[US_RX_FRAMES] += n;
                c[US_RX_BYTES] += bytes;
                return -e;
            }
            /* EFAULT/EINVAL: the frame (or its vnet header) did not fit;
             * the kernel has already consumed it. */
            if (e == EFAULT || e == EINVAL)
                c[US_DROP_RX_TRUNCATED]++;
            else
                c[US_DROP_RX_ERROR]++;
            continue;
        }
        if ((size_t)got >= cap) {
            /* tun_chr_read_iter cuts a frame to the buffer and returns the
             * buffer's length, so a full buffer means the frame was longer
             * than a slot. */
            c[US_DROP_RX_TRUNCATED]++;
            continue;
        }
        if (got < vlen || got - vlen < 14) {
            c[US_DROP_RX_SHORT_VNET]++;
            continue;
        }
        r->rx_len[n] = (uint32_t)(got - vlen);
        bytes += (uint64_t)(got - vlen);
        n++;
        slot += r->slot_size;
    }
    if (n == 0)
        c[US_RX_EMPTY_POLLS]++;
    c[US_RX_FRAMES] += n;
    c[US_RX_BYTES] += bytes;
    return (int)n;
}

int us_tx_burst(struct us_ring *r, uint32_t n)
{
    uint64_t *c = r->counters;
    const int vlen = r->vnet_hdr_len;
    const uint32_t max_len = r->slot_size - US_HEADROOM;
    uint32_t sent = 0;
    uint64_t bytes = 0;

    if (n > r->tx_slots)
        n = r->tx_slots;
    c[US_TX_BURSTS]++;
    for (uint32_t i = 0; i < n; i++) {
        uint32_t s = r->tx_slot[i];
        uint32_t len = r->tx_len[i];
        if (s < r->rx_slots || s >= r->rx_slots + r->tx_slots || len < 14 || len > max_len) {
            c[US_DROP_TX_BAD_DESC]++;
            continue;
        }
        uint8_t *p = r->pool + (size_t)s * r->slot_size + US_HEADROOM - vlen;
        c[US_TX_WRITES]++;
        ssize_t put = write(r->fd, p, (size_t)len + vlen);
        if (put < 0) {
            int e = errno;
            if (e == EAGAIN) {
                c[US_TX_EAGAIN]++;
                c[US_DROP_TX_EAGAIN]++;
                continue;
            }
            c[US_DROP_TX_ERROR]++;
            if (device_gone(e)) {
                c[US_TX_FRAMES] += sent;
                c[US_TX_BYTES] += bytes;
                return -e;
            }
            continue;
        }
        sent++;
        bytes += len;
    }
    c[US_TX_FRAMES] += sent;
    c[US_TX_BYTES] += bytes;
    return (int)sent;
}

int us_wait(struct us_ring *r, int timeout_ms)
{
    /* The fd is in the epoll set only while we wait: a registered fd makes
     * the kernel run the epoll callback for every frame it queues, which
     * slows the sender by about 8% when nobody is waiting. */
    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = 0};
    r->counters[US_WAITS]++;
    if (epoll_ctl(r->epfd, EPOLL_CTL_ADD, r->fd, &ev) < 0)
        return -errno;
    int n = epoll_wait(r->epfd, &ev, 1, timeout_ms);
    int e = errno;
    epoll_ctl(r->epfd, EPOLL_CTL_DEL, r->fd, NULL);
    if (n < 0)
        return e == EINTR ? 0 : -e;
    if (n > 0) {
        r->counters[US_WAKEUPS]++;
        if (ev.events & (EPOLLERR | EPOLLHUP))
            return -EIO;
    }
    return n;
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

uint64_t us_ref_read_loop(struct us_ring *r, uint64_t duration_ns)
{
    uint8_t *buf = r->pool + US_HEADROOM - r->vnet_hdr_len;
    const size_t cap = r->slot_size - US_HEADROOM + r->vnet_hdr_len;
    uint64_t frames = 0;
    uint64_t end = now_ns() + duration_ns;
    uint32_t spins = 0;
    for (;;) {
        if (read(r->fd, buf, cap) > 0)
            frames++;
        /* the clock is read every 64 reads to keep it off the loop */
        if ((++spins & 63) == 0 && now_ns() >= end)
            break;
    }
    return frames;
}

uint64_t us_ref_write_loop(struct us_ring *r, uint32_t frame_len, uint64_t duration_ns)
{
    uint8_t *p = r->pool + (size_t)r->rx_slots * r->slot_size + US_HEADROOM - r->vnet_hdr_len;
    uint64_t frames = 0;
    uint64_t end = now_ns() + duration_ns;
    uint32_t spins = 0;
    for (;;) {
        if (write(r->fd, p, (size_t)frame_len + r->vnet_hdr_len) > 0)
            frames++;
        if ((++spins & 63) == 0 && now_ns() >= end)
            break;
    }
    return frames;
}

uint64_t us_ref_send_loop(int fd, const uint8_t *frame, uint32_t len, uint64_t duration_ns)
{
    enum { BATCH = 64 };
    struct mmsghdr msgs[BATCH];
    struct iovec iov[BATCH];
    for (int i = 0; i < BATCH; i++) {
        iov[i].iov_base = (void *)frame;
        iov[i].iov_len = len;
        memset(&msgs[i], 0, sizeof msgs[i]);
        msgs[i].msg_hdr.msg_iov = &iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
    }
    uint64_t frames = 0;
    uint64_t end = now_ns() + duration_ns;
    while (now_ns() < end) {
        int k = sendmmsg(fd, msgs, BATCH, 0);
        if (k > 0)
            frames += (uint64_t)k;
    }
    return frames;
}
