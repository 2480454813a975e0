/*
 * ustack poll-mode ring over a Linux TAP device.
 *
 * One ring owns one TAP queue (one fd), an epoll fd for blocking waits and
 * a buffer pool mapped once at open.  The pool is split into fixed-size
 * slots: the first `rx_slots` are refilled by every rx_burst, the rest are
 * transmit slots that Python allocates, fills in place and hands to
 * tx_burst.  A frame always starts US_HEADROOM bytes into its slot; when
 * virtio-net headers are on, the header sits in the bytes just before it,
 * so one read() or write() moves header and frame together.
 *
 * Everything between the cdef markers is parsed by cffi (ext/build_ring.py):
 * keep it free of preprocessor lines.
 */
#ifndef USTACK_RING_H
#define USTACK_RING_H

#include <stddef.h>
#include <stdint.h>

/* cdef-begin */
#define US_HEADROOM 64
#define US_VNET_HDR_LEN 10

/* open flags */
#define US_OPEN_MULTI_QUEUE 1
#define US_OPEN_VNET_HDR 2
#define US_OPEN_CREATE 4

/* TUNSETOFFLOAD bits, mirrored so Python needs no kernel headers */
#define US_OFFLOAD_CSUM 1
#define US_OFFLOAD_TSO4 2
#define US_OFFLOAD_TSO6 4
#define US_OFFLOAD_TSO_ECN 8

/* Counters, in this order; Python reads them as one uint64 array. */
enum us_counter {
    US_RX_FRAMES, US_RX_BYTES, US_TX_FRAMES, US_TX_BYTES,
    US_RX_BURSTS, US_RX_EMPTY_POLLS, US_RX_READS, US_RX_EAGAIN,
    US_TX_BURSTS, US_TX_WRITES, US_TX_EAGAIN,
    US_WAITS, US_WAKEUPS,
    US_DROP_RX_TRUNCATED, US_DROP_RX_SHORT_VNET, US_DROP_RX_ERROR,
    US_DROP_TX_ERROR, US_DROP_TX_EAGAIN, US_DROP_TX_BAD_DESC,
    US_TX_POOL_EXHAUSTED,
    US_N_COUNTERS
};

struct us_ring_info {
    int fd;
    int vnet_hdr_len;
    int hugepages;
    unsigned int offloads;
    uint32_t slot_size;
    uint32_t rx_slots;
    uint32_t tx_slots;
    size_t pool_bytes;
};

struct us_ring;

struct us_ring *us_ring_open(const char *ifname, int flags, unsigned int offloads,
                             uint32_t rx_slots, uint32_t tx_slots, uint32_t slot_size,
                             char *err, size_t errlen);
void us_ring_close(struct us_ring *r);
void us_ring_info(const struct us_ring *r, struct us_ring_info *out);
int us_ring_set_offload(struct us_ring *r, unsigned int offloads);

uint8_t *us_ring_pool(struct us_ring *r);
uint64_t *us_ring_counters(struct us_ring *r);
uint32_t *us_ring_rx_len(struct us_ring *r);
uint32_t *us_ring_tx_slot(struct us_ring *r);
uint32_t *us_ring_tx_len(struct us_ring *r);

int us_rx_burst(struct us_ring *r, uint32_t max);
int us_tx_burst(struct us_ring *r, uint32_t n);
int us_wait(struct us_ring *r, int timeout_ms);

/* Reference loops with no Python in them, for tools/bench_ring.py. */
uint64_t us_ref_read_loop(struct us_ring *r, uint64_t duration_ns);
uint64_t us_ref_write_loop(struct us_ring *r, uint32_t frame_len, uint64_t duration_ns);
uint64_t us_ref_send_loop(int fd, const uint8_t *frame, uint32_t len, uint64_t duration_ns);
/* cdef-end */

#endif
