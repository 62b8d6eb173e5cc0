/* CRC-32 (IEEE 802.3, reflected polynomial 0xEDB88320), slicing-by-8. Same values as zlib.crc32. */
#include <string.h>

#include "crc32_table.h"
#include "internal.h"

uint32_t tide_crc32(uint32_t crc, const void* data, size_t size) {
  const uint8_t* p = data;
  uint32_t c = ~crc;
  while (size && ((uintptr_t)p & 7u)) {
    c = k_crc32_table[0][(c ^ *p++) & 0xFFu] ^ (c >> 8);
    --size;
  }
  while (size >= 8) {
    uint32_t lo, hi;
    memcpy(&lo, p, 4);
    memcpy(&hi, p + 4, 4);
#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
    lo = __builtin_bswap32(lo);
    hi = __builtin_bswap32(hi);
#endif
    lo ^= c;
    c = k_crc32_table[7][lo & 0xFFu] ^ k_crc32_table[6][(lo >> 8) & 0xFFu] ^
        k_crc32_table[5][(lo >> 16) & 0xFFu] ^ k_crc32_table[4][lo >> 24] ^
        k_crc32_table[3][hi & 0xFFu] ^ k_crc32_table[2][(hi >> 8) & 0xFFu] ^
        k_crc32_table[1][(hi >> 16) & 0xFFu] ^ k_crc32_table[0][hi >> 24];
    p += 8;
    size -= 8;
  }
  while (size--) c = k_crc32_table[0][(c ^ *p++) & 0xFFu] ^ (c >> 8);
  return ~c;
}
