/*
 * Internet checksum, RFC 1071.  Sums are kept in "network order" numeric
 * form: the value a big-endian reader would get by adding 16-bit words.
 * The inner loop adds native 64-bit words with end-around carry and swaps
 * once at the end, which RFC 1071 section 2(B) shows is equivalent.
 */
#include <string.h>
#include "checksum.h"

static inline uint32_t fold64(uint64_t acc)
{
    acc = (acc & 0xffffffffu) + (acc >> 32);
    acc = (acc & 0xffffffffu) + (acc >> 32);
    uint32_t s = (uint32_t)acc;
    s = (s & 0xffffu) + (s >> 16);
    s = (s & 0xffffu) + (s >> 16);
    return s;
}

static inline uint32_t native_to_net16(uint32_t s)
{
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    return ((s & 0xffu) << 8) | (s >> 8);
#else
    return s;
#endif
}

uint32_t us_csum_partial(const uint8_t *buf, size_t off, size_t len, uint32_t sum)
{
    const uint8_t *p = buf + off;
    uint64_t acc = 0;

    while (len >= 32) {
        uint64_t a, b, c, d;
        memcpy(&a, p, 8); memcpy(&b, p + 8, 8);
        memcpy(&c, p + 16, 8); memcpy(&d, p + 24, 8);
        acc += a; acc += (acc < a);
        acc += b; acc += (acc < b);
        acc += c; acc += (acc < c);
        acc += d; acc += (acc < d);
        p += 32; len -= 32;
    }
    while (len >= 8) {
        uint64_t v;
        memcpy(&v, p, 8);
        acc += v; acc += (acc < v);
        p += 8; len -= 8;
    }
    if (len >= 4) {
        uint32_t v;
        memcpy(&v, p, 4);
        acc += v; acc += (acc < v);
        p += 4; len -= 4;
    }
    if (len >= 2) {
        uint16_t v;
        memcpy(&v, p, 2);
        acc += v; acc += (acc < v);
        p += 2; len -= 2;
    }
    if (len) {
        /* a trailing byte is the high half of a zero-padded word */
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
        uint64_t v = *p;
#else
        uint64_t v = (uint64_t)*p << 8;
#endif
        acc += v; acc += (acc < v);
    }
    uint64_t total = (uint64_t)native_to_net16(fold64(acc)) + sum;
    return fold64(total);
}

uint16_t us_csum_fold(uint32_t sum)
{
    return (uint16_t)~fold64(sum);
}

uint16_t us_csum(const uint8_t *buf, size_t off, size_t len, uint32_t sum)
{
    return (uint16_t)~us_csum_partial(buf, off, len, sum);
}

uint32_t us_pseudo_sum(uint32_t src, uint32_t dst, uint8_t proto, uint32_t len)
{
    uint64_t acc = (uint64_t)(src >> 16) + (src & 0xffffu)
                 + (dst >> 16) + (dst & 0xffffu) + proto + (len >> 16) + (len & 0xffffu);
    return fold64(acc);
}
