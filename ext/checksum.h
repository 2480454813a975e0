/*
 * Internet checksum (RFC 1071) and the TCP/UDP pseudo-header sum.
 * Pure functions over memory; no state.  Parsed by cffi between the markers.
 */
#ifndef USTACK_CHECKSUM_H
#define USTACK_CHECKSUM_H

#include <stddef.h>
#include <stdint.h>

/* cdef-begin */
uint32_t us_csum_partial(const uint8_t *buf, size_t off, size_t len, uint32_t sum);
uint16_t us_csum_fold(uint32_t sum);
uint16_t us_csum(const uint8_t *buf, size_t off, size_t len, uint32_t sum);
uint32_t us_pseudo_sum(uint32_t src, uint32_t dst, uint8_t proto, uint32_t len);
/* cdef-end */

#endif
