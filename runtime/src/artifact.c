/*
 * Parser and validator of the tide artifact format (docs/artifact-format.md). Nothing in the image is
 * trusted: every read is bounds-checked, every count is checked against the bytes left before
 * anything is allocated, every index, offset and size is range- and overflow-checked.
 */
#include <stdio.h>
#include <string.h>

#include "internal.h"

#define TIDE_HEADER_BYTES 64
#define TIDE_TABLE_ENTRY_BYTES 48
#define TIDE_MAX_SECTIONS 64
#define TIDE_FORMAT_VERSION 1
#define TIDE_MAX_SECTION_ALIGNMENT ((uint64_t)1 << 20)
#define TIDE_WEIGHTS_ALIGNMENT 4096
#define TIDE_WEIGHT_ALIGNMENT 64

static const char* const k_section_names[TIDE_SECTION_KIND_MAX + 1] = {
    "?", "TARGET", "PLAN", "KERNELS_HOST", "WEIGHTS", "METADATA", "DEVICE_CODE",
};

/* ---- little-endian loads -------------------------------------------------------------------- */

static uint16_t le16(const uint8_t* p) { return (uint16_t)(p[0] | (p[1] << 8)); }
static uint32_t le32(const uint8_t* p) {
  return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}
static uint64_t le64(const uint8_t* p) { return (uint64_t)le32(p) | ((uint64_t)le32(p + 4) << 32); }

/* ---- dtypes ------------------------------------------------------------------------------------ */

const char* tide_dtype_name(tide_dtype_t d) {
  if (d.lanes != 1) return NULL;
  switch (d.code) {
    case 0:
      switch (d.bits) {
        case 8: return "int8";
        case 16: return "int16";
        case 32: return "int32";
        case 64: return "int64";
        default: return NULL;
      }
    case 1:
      switch (d.bits) {
        case 8: return "uint8";
        case 16: return "uint16";
        case 32: return "uint32";
        case 64: return "uint64";
        default: return NULL;
      }
    case 2:
      switch (d.bits) {
        case 16: return "float16";
        case 32: return "float32";
        case 64: return "float64";
        default: return NULL;
      }
    case 4: return d.bits == 16 ? "bfloat16" : NULL;
    case 6: return d.bits == 8 ? "bool" : NULL;
    default: return NULL;
  }
}

/* ---- a bounds-checked cursor over one section -------------------------------------------------- */

typedef struct reader_s {
  const uint8_t* data;
  uint64_t size;
  uint64_t pos;
  const char* section;
  char context[256]; /* what is being read, e.g. "entry 'main' buffer 3" */
  tide_mem_pool_t* pool;
  tide_status_t status;
} reader_t;

__attribute__((format(printf, 3, 4))) static int fail(reader_t* r, tide_status_code_t code,
                                                      const char* fmt, ...) {
  if (r->status) return 0;
  char msg[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof(msg), fmt, ap);
  va_end(ap);
  r->status = tide_make_status(code, "%s section, %s (byte %llu): %s", r->section,
                               r->context[0] ? r->context : "start", (unsigned long long)r->pos, msg);
  return 0;
}

static int oom(reader_t* r) { return fail(r, TIDE_STATUS_RESOURCE_EXHAUSTED, "out of memory"); }

__attribute__((format(printf, 2, 3))) static void set_context(reader_t* r, const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(r->context, sizeof(r->context), fmt, ap);
  va_end(ap);
}

static int need(reader_t* r, uint64_t n, const char* what) {
  if (r->size - r->pos < n) {
    return fail(r, TIDE_STATUS_DATA_LOSS, "truncated: %s needs %llu bytes, %llu left", what,
                (unsigned long long)n, (unsigned long long)(r->size - r->pos));
  }
  return 1;
}

static int rd_u8(reader_t* r, uint8_t* out, const char* what) {
  if (!need(r, 1, what)) return 0;
  *out = r->data[r->pos++];
  return 1;
}

static int rd_u32(reader_t* r, uint32_t* out, const char* what) {
  if (!need(r, 4, what)) return 0;
  *out = le32(r->data + r->pos);
  r->pos += 4;
  return 1;
}

static int rd_u64(reader_t* r, uint64_t* out, const char* what) {
  if (!need(r, 8, what)) return 0;
  *out = le64(r->data + r->pos);
  r->pos += 8;
  return 1;
}

/* A count of items of at least min_item_bytes each: must fit in the bytes left (so a corrupt count
 * cannot trigger a huge allocation) and in an int32 (the API's index type). */
static int rd_count(reader_t* r, uint32_t* out, uint64_t min_item_bytes, const char* what) {
  if (!rd_u32(r, out, what)) return 0;
  if (*out > (uint32_t)INT32_MAX) {
    return fail(r, TIDE_STATUS_DATA_LOSS, "%s %u exceeds %d", what, *out, INT32_MAX);
  }
  if ((uint64_t)*out * min_item_bytes > r->size - r->pos) {
    return fail(r, TIDE_STATUS_DATA_LOSS, "%s %u cannot fit in the %llu bytes left (truncated?)", what,
                *out, (unsigned long long)(r->size - r->pos));
  }
  return 1;
}

/* u32 length + printable ASCII; returns a NUL-terminated copy in the pool. */
static int rd_string(reader_t* r, const char** out, int allow_empty, const char* what) {
  uint32_t len;
  if (!rd_u32(r, &len, what)) return 0;
  if (len > TIDE_MAX_STRING) {
    return fail(r, TIDE_STATUS_DATA_LOSS, "%s length %u exceeds %d", what, len, TIDE_MAX_STRING);
  }
  if (len == 0 && !allow_empty) return fail(r, TIDE_STATUS_DATA_LOSS, "%s is empty", what);
  if (!need(r, len, what)) return 0;
  const uint8_t* s = r->data + r->pos;
  for (uint32_t i = 0; i < len; ++i) {
    if (s[i] < 0x20 || s[i] > 0x7E) {
      return fail(r, TIDE_STATUS_DATA_LOSS, "%s has a non-printable byte 0x%02x at position %u", what,
                  s[i], i);
    }
  }
  char* copy = tide_pool_alloc(r->pool, (size_t)len + 1);
  if (!copy) return oom(r);
  memcpy(copy, s, len);
  r->pos += len;
  *out = copy;
  return 1;
}

static int rd_dtype(reader_t* r, tide_dtype_t* out) {
  if (!need(r, 4, "dtype")) return 0;
  const uint8_t* p = r->data + r->pos;
  tide_dtype_t d = {p[0], p[1], le16(p + 2)};
  if (!tide_dtype_name(d)) {
    return fail(r, TIDE_STATUS_DATA_LOSS, "unsupported dtype (code %u, bits %u, lanes %u)", d.code,
                d.bits, d.lanes);
  }
  r->pos += 4;
  *out = d;
  return 1;
}

static int rd_tensor_desc(reader_t* r, tide_tensor_desc_t* out) {
  if (!rd_dtype(r, &out->dtype)) return 0;
  uint32_t ndim;
  if (!rd_u32(r, &ndim, "ndim")) return 0;
  if (ndim > TIDE_MAX_RANK) return fail(r, TIDE_STATUS_DATA_LOSS, "rank %u exceeds %d", ndim, TIDE_MAX_RANK);
  out->ndim = (int32_t)ndim;
  uint64_t n = 1;
  for (uint32_t i = 0; i < ndim; ++i) {
    uint64_t v;
    if (!rd_u64(r, &v, "shape dimension")) return 0;
    int64_t dim = (int64_t)v;
    if (dim < 0) return fail(r, TIDE_STATUS_DATA_LOSS, "shape dimension %u is negative (%lld)", i, (long long)dim);
    out->shape[i] = dim;
    if (tide_mul_overflows(n, (uint64_t)dim, &n)) {
      return fail(r, TIDE_STATUS_DATA_LOSS, "element count overflows 64 bits");
    }
  }
  if (tide_mul_overflows(n, out->dtype.bits / 8u, &out->nbytes)) {
    return fail(r, TIDE_STATUS_DATA_LOSS, "byte size overflows 64 bits");
  }
  return 1;
}

static int desc_equal(const tide_tensor_desc_t* a, const tide_tensor_desc_t* b) {
  if (a->dtype.code != b->dtype.code || a->dtype.bits != b->dtype.bits || a->ndim != b->ndim) return 0;
  for (int32_t i = 0; i < a->ndim; ++i) {
    if (a->shape[i] != b->shape[i]) return 0;
  }
  return 1;
}

/* offset + nbytes <= limit, without overflow. */
static int in_bounds(uint64_t offset, uint64_t nbytes, uint64_t limit) {
  uint64_t end;
  return !tide_add_overflows(offset, nbytes, &end) && end <= limit;
}

/* ---- name uniqueness: an open-addressing set of strings allocated in the pool ------------------ */

typedef struct name_set_s {
  const char** slots;
  uint64_t mask;
} name_set_t;

static int name_set_init(reader_t* r, name_set_t* set, uint32_t count) {
  uint64_t cap = 16;
  while (cap < (uint64_t)count * 2) cap <<= 1;
  set->slots = tide_pool_alloc_array(r->pool, (size_t)cap, sizeof(const char*));
  set->mask = cap - 1;
  return set->slots ? 1 : oom(r);
}

/* Returns 0 (and sets the status) if name is already present. */
static int name_set_add(reader_t* r, name_set_t* set, const char* name, const char* what) {
  uint64_t h = 1469598103934665603ull;
  for (const char* p = name; *p; ++p) h = (h ^ (uint8_t)*p) * 1099511628211ull;
  for (uint64_t i = h & set->mask;; i = (i + 1) & set->mask) {
    if (!set->slots[i]) {
      set->slots[i] = name;
      return 1;
    }
    if (strcmp(set->slots[i], name) == 0) {
      return fail(r, TIDE_STATUS_DATA_LOSS, "duplicate %s name '%s'", what, name);
    }
  }
}

/* ---- header and section table ------------------------------------------------------------------- */

static int is_pow2(uint64_t x) { return x && !(x & (x - 1)); }

static tide_status_t parse_header(const uint8_t* data, uint64_t size, tide_artifact_t* art,
                                  uint32_t section_crc[TIDE_SECTION_KIND_MAX + 1]) {
  if (size < TIDE_HEADER_BYTES) {
    return tide_make_status(TIDE_STATUS_DATA_LOSS,
                            "file is %llu bytes, smaller than the %d-byte header (truncated, or not a "
                            "tide artifact)",
                            (unsigned long long)size, TIDE_HEADER_BYTES);
  }
  if (memcmp(data, "TIDEART\0", 8) != 0) {
    return tide_make_status(TIDE_STATUS_DATA_LOSS, "not a tide artifact: bad magic (expected \"TIDEART\\0\")");
  }
  uint32_t version = le32(data + 8);
  if (version != TIDE_FORMAT_VERSION) {
    return tide_make_status(TIDE_STATUS_UNIMPLEMENTED,
                            "artifact format version %u is not supported (this runtime reads version %d)",
                            version, TIDE_FORMAT_VERSION);
  }
  uint32_t header_size = le32(data + 12);
  uint32_t n = le32(data + 16);
  uint32_t flags = le32(data + 20);
  uint64_t table_offset = le64(data + 24);
  uint64_t file_size = le64(data + 32);
  uint32_t header_crc = le32(data + 40);
  if (header_size != TIDE_HEADER_BYTES) {
    return tide_make_status(TIDE_STATUS_DATA_LOSS, "header: header size is %u, expected %d", header_size,
                            TIDE_HEADER_BYTES);
  }
  if (file_size != size) {
    return tide_make_status(TIDE_STATUS_DATA_LOSS,
                            "header: the header records a file of %llu bytes but the file has %llu "
                            "bytes (truncated or corrupt)",
                            (unsigned long long)file_size, (unsigned long long)size);
  }
  if (n < 1 || n > TIDE_MAX_SECTIONS) {
    return tide_make_status(TIDE_STATUS_DATA_LOSS, "header: section count %u is outside 1..%d", n,
                            TIDE_MAX_SECTIONS);
  }
  uint64_t table_bytes = (uint64_t)n * TIDE_TABLE_ENTRY_BYTES;
  if (table_offset < TIDE_HEADER_BYTES || table_offset % 8 != 0 || !in_bounds(table_offset, table_bytes, size)) {
    return tide_make_status(TIDE_STATUS_DATA_LOSS,
                            "header: section table at offset %llu (%u entries) is misaligned, overlaps "
                            "the header or lies outside the %llu-byte file",
                            (unsigned long long)table_offset, n, (unsigned long long)size);
  }
  uint8_t head[TIDE_HEADER_BYTES];
  memcpy(head, data, TIDE_HEADER_BYTES);
  memset(head + 40, 0, 4);
  uint32_t crc = tide_crc32(0, head, TIDE_HEADER_BYTES);
  crc = tide_crc32(crc, data + table_offset, table_bytes);
  if (crc != header_crc) {
    return tide_make_status(TIDE_STATUS_DATA_LOSS,
                            "header: checksum mismatch over the header and section table (stored "
                            "0x%08x, computed 0x%08x): the file is corrupt",
                            header_crc, crc);
  }
  if (flags != 0) return tide_make_status(TIDE_STATUS_DATA_LOSS, "header: flags are 0x%x, expected 0", flags);
  for (int i = 44; i < TIDE_HEADER_BYTES; ++i) {
    if (data[i]) return tide_make_status(TIDE_STATUS_DATA_LOSS, "header: reserved byte %d is not zero", i);
  }

  uint64_t starts[TIDE_MAX_SECTIONS], ends[TIDE_MAX_SECTIONS];
  const char* names[TIDE_MAX_SECTIONS];
  for (uint32_t i = 0; i < n; ++i) {
    const uint8_t* e = data + table_offset + (uint64_t)i * TIDE_TABLE_ENTRY_BYTES;
    uint32_t kind = le32(e);
    uint32_t sflags = le32(e + 4);
    uint64_t off = le64(e + 8), len = le64(e + 16);
    uint32_t scrc = le32(e + 24), align = le32(e + 28);
    if (kind < 1 || kind > TIDE_SECTION_KIND_MAX) {
      return tide_make_status(TIDE_STATUS_DATA_LOSS, "section table entry %u: unknown section kind %u", i, kind);
    }
    const char* kname = k_section_names[kind];
    if (art->sections[kind].present) {
      return tide_make_status(TIDE_STATUS_DATA_LOSS, "section table entry %u: a second %s section", i, kname);
    }
    if (sflags != 0) {
      return tide_make_status(TIDE_STATUS_DATA_LOSS, "%s section: flags are 0x%x, expected 0", kname, sflags);
    }
    if (!is_pow2(align) || align > TIDE_MAX_SECTION_ALIGNMENT) {
      return tide_make_status(TIDE_STATUS_DATA_LOSS,
                              "%s section: alignment %u is not a power of two up to %llu", kname, align,
                              (unsigned long long)TIDE_MAX_SECTION_ALIGNMENT);
    }
    if (kind == TIDE_SECTION_WEIGHTS && align < TIDE_WEIGHTS_ALIGNMENT) {
      return tide_make_status(TIDE_STATUS_DATA_LOSS, "WEIGHTS section: alignment %u is below %d", align,
                              TIDE_WEIGHTS_ALIGNMENT);
    }
    if (off % align != 0) {
      return tide_make_status(TIDE_STATUS_DATA_LOSS, "%s section: offset %llu is not %u-byte aligned", kname,
                              (unsigned long long)off, align);
    }
    if (!in_bounds(off, len, size)) {
      return tide_make_status(TIDE_STATUS_DATA_LOSS,
                              "%s section: bytes %llu..+%llu lie outside the %llu-byte file (truncated?)",
                              kname, (unsigned long long)off, (unsigned long long)len,
                              (unsigned long long)size);
    }
    const uint8_t* name = e + 32;
    int ended = 0;
    for (int k = 0; k < 16; ++k) {
      if (name[k] == 0) {
        ended = 1;
      } else if (ended || name[k] < 0x20 || name[k] > 0x7E) {
        return tide_make_status(TIDE_STATUS_DATA_LOSS,
                                "%s section: table name is not NUL-padded printable ASCII", kname);
      }
    }
    if (len > 0 && (off < table_offset + table_bytes && table_offset < off + len)) {
      return tide_make_status(TIDE_STATUS_DATA_LOSS, "%s section overlaps the section table", kname);
    }
    if (len > 0 && off < TIDE_HEADER_BYTES) {
      return tide_make_status(TIDE_STATUS_DATA_LOSS, "%s section overlaps the header", kname);
    }
    for (uint32_t j = 0; j < i; ++j) {
      if (len > 0 && starts[j] < ends[j] && off < ends[j] && starts[j] < off + len) {
        return tide_make_status(TIDE_STATUS_DATA_LOSS, "%s section overlaps the %s section", kname, names[j]);
      }
    }
    starts[i] = off;
    ends[i] = off + len;
    names[i] = kname;
    art->sections[kind].present = 1;
    art->sections[kind].offset = off;
    art->sections[kind].size = len;
    section_crc[kind] = scrc;
  }
  static const int required[] = {TIDE_SECTION_TARGET, TIDE_SECTION_PLAN, TIDE_SECTION_WEIGHTS};
  for (size_t i = 0; i < sizeof(required) / sizeof(required[0]); ++i) {
    if (!art->sections[required[i]].present) {
      return tide_make_status(TIDE_STATUS_DATA_LOSS, "the artifact has no %s section",
                              k_section_names[required[i]]);
    }
  }
  return NULL;
}

static tide_status_t verify_section_crc(const uint8_t* data, const tide_artifact_t* art, int kind,
                                        uint32_t expected) {
  const tide_section_ref_t* s = &art->sections[kind];
  uint32_t crc = tide_crc32(0, data + s->offset, (size_t)s->size);
  if (crc != expected) {
    return tide_make_status(TIDE_STATUS_DATA_LOSS,
                            "%s section: checksum mismatch (stored 0x%08x, computed 0x%08x): the file "
                            "is corrupt",
                            k_section_names[kind], expected, crc);
  }
  return NULL;
}

/* ---- TARGET ------------------------------------------------------------------------------------ */

static int parse_target(reader_t* r, tide_artifact_t* art) {
  set_context(r, "target");
  if (!rd_u32(r, &art->target_kind, "target kind")) return 0;
  if (art->target_kind < TIDE_TARGET_CPU || art->target_kind > TIDE_TARGET_ASCEND) {
    return fail(r, TIDE_STATUS_DATA_LOSS, "unknown target kind %u", art->target_kind);
  }
  if (!rd_string(r, &art->host_arch, 0, "host architecture")) return 0;
  if (!rd_u64(r, &art->cpu_features, "CPU feature mask")) return 0;
  uint64_t unknown = art->cpu_features & ~(((uint64_t)1 << TIDE_CPU_FEATURE_COUNT) - 1);
  if (unknown) {
    return fail(r, TIDE_STATUS_DATA_LOSS, "unknown CPU feature bits 0x%llx", (unsigned long long)unknown);
  }
  if (!rd_string(r, &art->device_arch, 1, "device architecture")) return 0;
  if (art->target_kind == TIDE_TARGET_CPU && art->device_arch[0]) {
    return fail(r, TIDE_STATUS_DATA_LOSS, "a cpu target has device architecture '%s' (expected \"\")",
                art->device_arch);
  }
  if (r->pos != r->size) {
    return fail(r, TIDE_STATUS_DATA_LOSS, "%llu unexpected trailing bytes",
                (unsigned long long)(r->size - r->pos));
  }
  return 1;
}

/* ---- PLAN -------------------------------------------------------------------------------------- */

/* Smallest encodings, to bound counts by the bytes left. */
#define MIN_STRING 5u                       /* u32 length + 1 byte */
#define MIN_DESC 8u                         /* dtype + ndim */
#define MIN_WEIGHT (MIN_STRING + MIN_DESC + 16u)
#define MIN_STATE (MIN_STRING + MIN_DESC)
#define MIN_BUFFER (1u + 4u + 8u + MIN_DESC)
#define MIN_IO (MIN_STRING + 8u)
#define MIN_OP (1u + 4u + 4u)
#define MIN_ARG 9u
#define MIN_ENTRY (MIN_STRING + 8u + 16u)

static int parse_io(reader_t* r, const char* entry, const char* what, uint32_t* count, tide_io_decl_t** out) {
  set_context(r, "entry '%s' %s", entry, what);
  if (!rd_count(r, count, MIN_IO, what)) return 0;
  *out = tide_pool_alloc_array(r->pool, *count, sizeof(tide_io_decl_t));
  if (!*out) return oom(r);
  name_set_t names;
  if (!name_set_init(r, &names, *count)) return 0;
  for (uint32_t i = 0; i < *count; ++i) {
    tide_io_decl_t* io = &(*out)[i];
    set_context(r, "entry '%s' %s %u", entry, what, i);
    if (!rd_string(r, &io->name, 0, "name")) return 0;
    set_context(r, "entry '%s' %s '%s'", entry, what, io->name);
    if (!name_set_add(r, &names, io->name, what)) return 0;
    if (!rd_u32(r, &io->buffer, "buffer index") || !rd_u32(r, &io->role, "role")) return 0;
    if (io->role > TIDE_IO_STATE) return fail(r, TIDE_STATUS_DATA_LOSS, "unknown role %u", io->role);
  }
  return 1;
}

static int validate_entry(reader_t* r, const tide_artifact_t* art, tide_entry_decl_t* e) {
  /* Inputs: a data input is bound to its own base buffer (kind input, index = position, offset
   * 0); a state input to a whole state buffer, at most once per state. */
  for (uint32_t i = 0; i < e->num_inputs; ++i) {
    const tide_io_decl_t* in = &e->inputs[i];
    set_context(r, "entry '%s' input '%s'", e->name, in->name);
    if (in->buffer >= e->num_buffers) {
      return fail(r, TIDE_STATUS_DATA_LOSS, "buffer index %u out of range (%u buffers)", in->buffer,
                  e->num_buffers);
    }
    const tide_buffer_decl_t* b = &e->buffers[in->buffer];
    if (in->role == TIDE_IO_DATA) {
      if (b->kind != TIDE_BUF_INPUT || b->index != i || b->offset != 0) {
        return fail(r, TIDE_STATUS_DATA_LOSS,
                    "data input must be bound to an input buffer with index %u and offset 0 (buffer %u "
                    "has kind %u, index %u, offset %llu)",
                    i, in->buffer, b->kind, b->index, (unsigned long long)b->offset);
      }
    } else {
      if (b->kind != TIDE_BUF_STATE || b->offset != 0 || !desc_equal(&b->desc, &art->states[b->index].desc)) {
        return fail(r, TIDE_STATUS_DATA_LOSS,
                    "state input must be bound to a whole state buffer (buffer %u is not)", in->buffer);
      }
      for (uint32_t j = 0; j < i; ++j) {
        const tide_io_decl_t* o = &e->inputs[j];
        if (o->role == TIDE_IO_STATE && e->buffers[o->buffer].index == b->index) {
          return fail(r, TIDE_STATUS_DATA_LOSS, "state %u is bound to inputs '%s' and '%s'", b->index,
                      o->name, in->name);
        }
      }
    }
  }
  /* Input views: in range, on a data input, inside its base buffer. */
  for (uint32_t i = 0; i < e->num_buffers; ++i) {
    const tide_buffer_decl_t* b = &e->buffers[i];
    if (b->kind != TIDE_BUF_INPUT) continue;
    set_context(r, "entry '%s' buffer %u", e->name, i);
    if (b->index >= e->num_inputs) {
      return fail(r, TIDE_STATUS_DATA_LOSS, "input index %u out of range (%u inputs)", b->index, e->num_inputs);
    }
    const tide_io_decl_t* in = &e->inputs[b->index];
    if (in->role != TIDE_IO_DATA) {
      return fail(r, TIDE_STATUS_DATA_LOSS, "input buffer refers to state input '%s'", in->name);
    }
    uint64_t limit = e->buffers[in->buffer].desc.nbytes;
    if (!in_bounds(b->offset, b->desc.nbytes, limit)) {
      return fail(r, TIDE_STATUS_DATA_LOSS,
                  "view of %llu bytes at offset %llu exceeds input '%s' (%llu bytes)",
                  (unsigned long long)b->desc.nbytes, (unsigned long long)b->offset, in->name,
                  (unsigned long long)limit);
    }
  }
  for (uint32_t i = 0; i < e->num_outputs; ++i) {
    const tide_io_decl_t* out = &e->outputs[i];
    set_context(r, "entry '%s' output '%s'", e->name, out->name);
    if (out->buffer >= e->num_buffers) {
      return fail(r, TIDE_STATUS_DATA_LOSS, "buffer index %u out of range (%u buffers)", out->buffer,
                  e->num_buffers);
    }
    const tide_buffer_decl_t* b = &e->buffers[out->buffer];
    if (out->role == TIDE_IO_STATE) {
      if (b->kind != TIDE_BUF_STATE || b->offset != 0 || !desc_equal(&b->desc, &art->states[b->index].desc)) {
        return fail(r, TIDE_STATUS_DATA_LOSS,
                    "state output must be a whole state buffer (buffer %u is not)", out->buffer);
      }
      for (uint32_t j = 0; j < i; ++j) {
        const tide_io_decl_t* o = &e->outputs[j];
        if (o->role == TIDE_IO_STATE && e->buffers[o->buffer].index == b->index) {
          return fail(r, TIDE_STATUS_DATA_LOSS, "state %u is bound to outputs '%s' and '%s'", b->index,
                      o->name, out->name);
        }
      }
    }
  }
  for (uint32_t i = 0; i < e->num_ops; ++i) {
    const tide_op_decl_t* op = &e->ops[i];
    set_context(r, "entry '%s' op %u", e->name, i);
    for (uint32_t a = 0; a < op->num_args; ++a) {
      const tide_arg_decl_t* arg = &op->args[a];
      if (arg->kind == TIDE_ARG_BUFFER && (arg->value < 0 || (uint64_t)arg->value >= e->num_buffers)) {
        return fail(r, TIDE_STATUS_DATA_LOSS, "argument %u: buffer %lld out of range (%u buffers)", a,
                    (long long)arg->value, e->num_buffers);
      }
    }
  }
  return 1;
}

static int parse_entry(reader_t* r, tide_artifact_t* art, tide_entry_decl_t* e, uint32_t index) {
  set_context(r, "entry %u", index);
  if (!rd_string(r, &e->name, 0, "entry name")) return 0;
  set_context(r, "entry '%s'", e->name);
  if (!rd_u64(r, &e->arena_bytes, "arena bytes")) return 0;
  if (e->arena_bytes % 64 != 0) {
    return fail(r, TIDE_STATUS_DATA_LOSS, "arena bytes %llu is not a multiple of 64",
                (unsigned long long)e->arena_bytes);
  }
  if (!rd_count(r, &e->num_buffers, MIN_BUFFER, "buffer count")) return 0;
  e->buffers = tide_pool_alloc_array(r->pool, e->num_buffers, sizeof(tide_buffer_decl_t));
  if (!e->buffers) return oom(r);
  for (uint32_t i = 0; i < e->num_buffers; ++i) {
    tide_buffer_decl_t* b = &e->buffers[i];
    set_context(r, "entry '%s' buffer %u", e->name, i);
    if (!rd_u8(r, &b->kind, "kind") || !rd_u32(r, &b->index, "index") || !rd_u64(r, &b->offset, "offset") ||
        !rd_tensor_desc(r, &b->desc)) {
      return 0;
    }
    switch (b->kind) {
      case TIDE_BUF_ARENA:
        if (b->index != 0) return fail(r, TIDE_STATUS_DATA_LOSS, "arena buffer has index %u (expected 0)", b->index);
        if (!in_bounds(b->offset, b->desc.nbytes, e->arena_bytes)) {
          return fail(r, TIDE_STATUS_DATA_LOSS, "%llu bytes at offset %llu exceed the %llu-byte arena",
                      (unsigned long long)b->desc.nbytes, (unsigned long long)b->offset,
                      (unsigned long long)e->arena_bytes);
        }
        break;
      case TIDE_BUF_INPUT: /* checked once the inputs are known */
        break;
      case TIDE_BUF_WEIGHT:
        if (b->index >= art->num_weights) {
          return fail(r, TIDE_STATUS_DATA_LOSS, "weight index %u out of range (%u weights)", b->index,
                      art->num_weights);
        }
        if (!in_bounds(b->offset, b->desc.nbytes, art->weights[b->index].desc.nbytes)) {
          return fail(r, TIDE_STATUS_DATA_LOSS, "view of %llu bytes at offset %llu exceeds weight '%s'",
                      (unsigned long long)b->desc.nbytes, (unsigned long long)b->offset,
                      art->weights[b->index].name);
        }
        break;
      case TIDE_BUF_STATE:
        if (b->index >= art->num_states) {
          return fail(r, TIDE_STATUS_DATA_LOSS, "state index %u out of range (%u states)", b->index,
                      art->num_states);
        }
        if (!in_bounds(b->offset, b->desc.nbytes, art->states[b->index].desc.nbytes)) {
          return fail(r, TIDE_STATUS_DATA_LOSS, "view of %llu bytes at offset %llu exceeds state '%s'",
                      (unsigned long long)b->desc.nbytes, (unsigned long long)b->offset,
                      art->states[b->index].name);
        }
        break;
      default:
        return fail(r, TIDE_STATUS_DATA_LOSS, "unknown buffer kind %u", b->kind);
    }
  }
  if (!parse_io(r, e->name, "input", &e->num_inputs, &e->inputs)) return 0;
  if (!parse_io(r, e->name, "output", &e->num_outputs, &e->outputs)) return 0;
  set_context(r, "entry '%s' ops", e->name);
  if (!rd_count(r, &e->num_ops, MIN_OP, "op count")) return 0;
  e->ops = tide_pool_alloc_array(r->pool, e->num_ops, sizeof(tide_op_decl_t));
  if (!e->ops) return oom(r);
  for (uint32_t i = 0; i < e->num_ops; ++i) {
    tide_op_decl_t* op = &e->ops[i];
    set_context(r, "entry '%s' op %u", e->name, i);
    if (!rd_u8(r, &op->op, "op") || !rd_u32(r, &op->kernel, "kernel index")) return 0;
    if (op->op != TIDE_OP_CALL) return fail(r, TIDE_STATUS_DATA_LOSS, "unknown op %u (0: a kernel call)", op->op);
    if (op->kernel >= art->num_kernels) {
      return fail(r, TIDE_STATUS_DATA_LOSS, "kernel index %u out of range (%u kernels)", op->kernel, art->num_kernels);
    }
    if (!rd_count(r, &op->num_args, MIN_ARG, "argument count")) return 0;
    if (op->num_args > TIDE_MAX_KERNEL_ARGS) {
      return fail(r, TIDE_STATUS_DATA_LOSS, "%u arguments exceed the limit of %d", op->num_args,
                  TIDE_MAX_KERNEL_ARGS);
    }
    op->args = tide_pool_alloc_array(r->pool, op->num_args, sizeof(tide_arg_decl_t));
    if (!op->args) return oom(r);
    for (uint32_t a = 0; a < op->num_args; ++a) {
      uint64_t v;
      if (!rd_u8(r, &op->args[a].kind, "argument kind") || !rd_u64(r, &v, "argument value")) return 0;
      op->args[a].value = (int64_t)v;
      if (op->args[a].kind > TIDE_ARG_INT) {
        return fail(r, TIDE_STATUS_DATA_LOSS, "argument %u has unknown kind %u", a, op->args[a].kind);
      }
    }
  }
  return validate_entry(r, art, e);
}

static int parse_plan(reader_t* r, tide_artifact_t* art) {
  uint64_t weights_size = art->sections[TIDE_SECTION_WEIGHTS].size;
  name_set_t names;

  set_context(r, "kernels");
  if (!rd_count(r, &art->num_kernels, MIN_STRING, "kernel count")) return 0;
  art->kernel_names = tide_pool_alloc_array(r->pool, art->num_kernels, sizeof(const char*));
  if (!art->kernel_names) return oom(r);
  if (!name_set_init(r, &names, art->num_kernels)) return 0;
  for (uint32_t i = 0; i < art->num_kernels; ++i) {
    set_context(r, "kernel %u", i);
    if (!rd_string(r, &art->kernel_names[i], 0, "kernel name")) return 0;
    if (!name_set_add(r, &names, art->kernel_names[i], "kernel")) return 0;
  }

  set_context(r, "weights");
  if (!rd_count(r, &art->num_weights, MIN_WEIGHT, "weight count")) return 0;
  art->weights = tide_pool_alloc_array(r->pool, art->num_weights, sizeof(tide_weight_decl_t));
  if (!art->weights) return oom(r);
  if (!name_set_init(r, &names, art->num_weights)) return 0;
  for (uint32_t i = 0; i < art->num_weights; ++i) {
    tide_weight_decl_t* w = &art->weights[i];
    set_context(r, "weight %u", i);
    if (!rd_string(r, &w->name, 0, "weight name")) return 0;
    set_context(r, "weight '%s'", w->name);
    if (!name_set_add(r, &names, w->name, "weight")) return 0;
    uint64_t nbytes;
    if (!rd_tensor_desc(r, &w->desc) || !rd_u64(r, &w->offset, "offset") || !rd_u64(r, &nbytes, "byte size")) {
      return 0;
    }
    if (w->offset % TIDE_WEIGHT_ALIGNMENT != 0) {
      return fail(r, TIDE_STATUS_DATA_LOSS, "offset %llu is not %d-byte aligned", (unsigned long long)w->offset,
                  TIDE_WEIGHT_ALIGNMENT);
    }
    if (nbytes != w->desc.nbytes) {
      return fail(r, TIDE_STATUS_DATA_LOSS, "byte size %llu does not match its dtype and shape (%llu)",
                  (unsigned long long)nbytes, (unsigned long long)w->desc.nbytes);
    }
    if (!in_bounds(w->offset, nbytes, weights_size)) {
      return fail(r, TIDE_STATUS_DATA_LOSS, "%llu bytes at offset %llu exceed the %llu-byte WEIGHTS section",
                  (unsigned long long)nbytes, (unsigned long long)w->offset, (unsigned long long)weights_size);
    }
  }

  set_context(r, "states");
  if (!rd_count(r, &art->num_states, MIN_STATE, "state count")) return 0;
  art->states = tide_pool_alloc_array(r->pool, art->num_states, sizeof(tide_state_decl_t));
  if (!art->states) return oom(r);
  if (!name_set_init(r, &names, art->num_states)) return 0;
  for (uint32_t i = 0; i < art->num_states; ++i) {
    set_context(r, "state %u", i);
    if (!rd_string(r, &art->states[i].name, 0, "state name")) return 0;
    set_context(r, "state '%s'", art->states[i].name);
    if (!name_set_add(r, &names, art->states[i].name, "state")) return 0;
    if (!rd_tensor_desc(r, &art->states[i].desc)) return 0;
  }

  set_context(r, "entries");
  if (!rd_count(r, &art->num_entries, MIN_ENTRY, "entry count")) return 0;
  if (art->num_entries == 0) return fail(r, TIDE_STATUS_DATA_LOSS, "the plan has no entries");
  art->entries = tide_pool_alloc_array(r->pool, art->num_entries, sizeof(tide_entry_decl_t));
  if (!art->entries) return oom(r);
  if (!name_set_init(r, &names, art->num_entries)) return 0;
  for (uint32_t i = 0; i < art->num_entries; ++i) {
    if (!parse_entry(r, art, &art->entries[i], i)) return 0;
    set_context(r, "entry '%s'", art->entries[i].name);
    if (!name_set_add(r, &names, art->entries[i].name, "entry")) return 0;
  }
  set_context(r, "end");
  if (r->pos != r->size) {
    return fail(r, TIDE_STATUS_DATA_LOSS, "%llu unexpected trailing bytes", (unsigned long long)(r->size - r->pos));
  }
  return 1;
}

/* ---- DEVICE_CODE (cuda) ------------------------------------------------------------------------ */

static const char* const k_tag_names[] = {"blockIdx.x",  "blockIdx.y",  "blockIdx.z",
                                          "threadIdx.x", "threadIdx.y", "threadIdx.z",
                                          "tir.use_dyn_shared_memory"};

/* "sm_" digits [a]: fills sm and arch_specific; 0 if malformed. */
static int parse_sm(const char* arch, uint32_t* sm, int* arch_specific) {
  if (strncmp(arch, "sm_", 3) != 0) return 0;
  const char* p = arch + 3;
  uint32_t v = 0;
  int digits = 0;
  for (; *p >= '0' && *p <= '9'; ++p, ++digits) {
    if (digits >= 4) return 0;
    v = v * 10u + (uint32_t)(*p - '0');
  }
  if (digits == 0) return 0;
  *arch_specific = *p == 'a';
  if (*p == 'a') ++p;
  if (*p) return 0;
  *sm = v;
  return 1;
}

#define MIN_IMAGE (MIN_STRING + 1u + 8u + 1u)
#define MIN_FUNCTION (MIN_STRING + 8u)

static int parse_device_code(reader_t* r, tide_artifact_t* art) {
  set_context(r, "header");
  if (!need(r, 8, "magic")) return 0;
  if (memcmp(r->data, "TIDECUDA", 8) != 0) return fail(r, TIDE_STATUS_DATA_LOSS, "bad magic (expected TIDECUDA)");
  r->pos = 8;
  uint32_t version;
  if (!rd_u32(r, &version, "version")) return 0;
  if (version != 1) return fail(r, TIDE_STATUS_UNIMPLEMENTED, "version %u (this runtime reads version 1)", version);
  set_context(r, "images");
  if (!rd_count(r, &art->num_device_images, MIN_IMAGE, "image count")) return 0;
  if (art->num_device_images == 0) return fail(r, TIDE_STATUS_DATA_LOSS, "no device image");
  art->device_images = tide_pool_alloc_array(r->pool, art->num_device_images, sizeof(tide_device_image_t));
  if (!art->device_images) return oom(r);
  name_set_t names;
  if (!name_set_init(r, &names, art->num_device_images)) return 0;
  char listed[TIDE_MAX_STRING + 1] = "";
  size_t used = 0;
  for (uint32_t i = 0; i < art->num_device_images; ++i) {
    tide_device_image_t* img = &art->device_images[i];
    set_context(r, "image %u", i);
    if (!rd_string(r, &img->arch, 0, "architecture")) return 0;
    set_context(r, "image '%s'", img->arch);
    if (!parse_sm(img->arch, &img->sm, &img->arch_specific)) {
      return fail(r, TIDE_STATUS_DATA_LOSS, "architecture '%s' is not sm_<digits>[a]", img->arch);
    }
    if (!name_set_add(r, &names, img->arch, "image architecture")) return 0;
    if (i > 0) {
      const tide_device_image_t* prev = &art->device_images[i - 1];
      if (prev->sm > img->sm || (prev->sm == img->sm && prev->arch_specific >= img->arch_specific)) {
        return fail(r, TIDE_STATUS_DATA_LOSS, "images are not in ascending architecture order ('%s' after '%s')",
                    img->arch, prev->arch);
      }
    }
    int n = snprintf(listed + used, sizeof(listed) - used, "%s%s", i ? "," : "", img->arch);
    used = n < 0 || (size_t)n >= sizeof(listed) - used ? sizeof(listed) - 1 : used + (size_t)n;
    if (!rd_u8(r, &img->format, "format")) return 0;
    if (img->format > TIDE_IMAGE_PTX) return fail(r, TIDE_STATUS_DATA_LOSS, "unknown image format %u", img->format);
    if (!rd_u64(r, &img->size, "image size")) return 0;
    if (img->size == 0) return fail(r, TIDE_STATUS_DATA_LOSS, "empty image");
    if (!need(r, img->size, "image bytes")) return 0;
    img->offset = r->pos;
    if (img->format == TIDE_IMAGE_PTX && memchr(r->data + r->pos, 0, (size_t)img->size)) {
      return fail(r, TIDE_STATUS_DATA_LOSS, "ptx text holds a NUL byte");
    }
    r->pos += img->size;
  }
  if (strcmp(listed, art->device_arch) != 0) {
    return fail(r, TIDE_STATUS_DATA_LOSS, "the images are %s but the TARGET device architecture is '%s'", listed,
                art->device_arch);
  }
  set_context(r, "functions");
  if (!rd_count(r, &art->num_device_functions, MIN_FUNCTION, "function count")) return 0;
  art->device_functions =
      tide_pool_alloc_array(r->pool, art->num_device_functions, sizeof(tide_device_function_t));
  if (!art->device_functions && art->num_device_functions) return oom(r);
  if (!name_set_init(r, &names, art->num_device_functions)) return 0;
  for (uint32_t i = 0; i < art->num_device_functions; ++i) {
    tide_device_function_t* f = &art->device_functions[i];
    set_context(r, "function %u", i);
    if (!rd_string(r, &f->name, 0, "function name")) return 0;
    set_context(r, "function '%s'", f->name);
    if (!name_set_add(r, &names, f->name, "function")) return 0;
    if (!rd_count(r, &f->num_args, 4, "argument count")) return 0;
    if (f->num_args > TIDE_MAX_KERNEL_ARGS) {
      return fail(r, TIDE_STATUS_DATA_LOSS, "%u arguments exceed %d", f->num_args, TIDE_MAX_KERNEL_ARGS);
    }
    f->args = tide_pool_alloc_array(r->pool, f->num_args, sizeof(tide_dtype_t));
    if (!f->args && f->num_args) return oom(r);
    for (uint32_t k = 0; k < f->num_args; ++k) {
      const uint8_t* p = r->data + r->pos;
      tide_dtype_t d = {p[0], p[1], le16(p + 2)};
      int handle = d.code == 3 && d.bits == 64 && d.lanes == 1;
      if (!handle && !tide_dtype_name(d)) {
        return fail(r, TIDE_STATUS_DATA_LOSS, "argument %u: unsupported dtype (code %u, bits %u, lanes %u)", k,
                    d.code, d.bits, d.lanes);
      }
      f->args[k] = d;
      r->pos += 4;
    }
    if (!rd_count(r, &f->num_tags, MIN_STRING, "launch tag count")) return 0;
    f->tags = tide_pool_alloc_array(r->pool, f->num_tags, 1);
    if (!f->tags && f->num_tags) return oom(r);
    unsigned seen = 0;
    for (uint32_t k = 0; k < f->num_tags; ++k) {
      const char* tag;
      if (!rd_string(r, &tag, 0, "launch tag")) return 0;
      int found = -1;
      for (int t = 0; t <= TIDE_TAG_DYN_SHARED; ++t) {
        if (strcmp(tag, k_tag_names[t]) == 0) found = t;
      }
      if (found < 0) return fail(r, TIDE_STATUS_DATA_LOSS, "launch tag %u: unknown tag '%s'", k, tag);
      if (seen & (1u << found)) return fail(r, TIDE_STATUS_DATA_LOSS, "launch tag %u: '%s' repeated", k, tag);
      if (found == TIDE_TAG_DYN_SHARED && k + 1 != f->num_tags) {
        return fail(r, TIDE_STATUS_DATA_LOSS, "launch tag %u: the dynamic shared memory tag must be last", k);
      }
      seen |= 1u << found;
      f->tags[k] = (uint8_t)found;
    }
  }
  set_context(r, "end");
  if (r->pos != r->size) {
    return fail(r, TIDE_STATUS_DATA_LOSS, "%llu unexpected trailing bytes", (unsigned long long)(r->size - r->pos));
  }
  return 1;
}

/* ---- METADATA: UTF-8 without NUL ------------------------------------------------------------- */

static tide_status_t check_metadata(const uint8_t* p, uint64_t n) {
  for (uint64_t i = 0; i < n;) {
    uint8_t c = p[i];
    uint64_t len;
    uint32_t cp;
    if (c == 0) {
      return tide_make_status(TIDE_STATUS_DATA_LOSS, "METADATA section: NUL byte at offset %llu", (unsigned long long)i);
    }
    if (c < 0x80) {
      ++i;
      continue;
    } else if ((c & 0xE0) == 0xC0) {
      len = 2;
      cp = c & 0x1Fu;
    } else if ((c & 0xF0) == 0xE0) {
      len = 3;
      cp = c & 0x0Fu;
    } else if ((c & 0xF8) == 0xF0) {
      len = 4;
      cp = c & 0x07u;
    } else {
      len = 0;
      cp = 0;
    }
    int ok = len != 0 && n - i >= len;
    for (uint64_t k = 1; ok && k < len; ++k) {
      ok = (p[i + k] & 0xC0) == 0x80;
      cp = (cp << 6) | (p[i + k] & 0x3Fu);
    }
    /* Reject overlong forms, surrogates and code points above U+10FFFF. */
    if (ok) {
      static const uint32_t k_min[5] = {0, 0, 0x80, 0x800, 0x10000};
      ok = cp >= k_min[len] && cp <= 0x10FFFF && (cp < 0xD800 || cp > 0xDFFF);
    }
    if (!ok) {
      return tide_make_status(TIDE_STATUS_DATA_LOSS, "METADATA section: invalid UTF-8 at offset %llu",
                              (unsigned long long)i);
    }
    i += len;
  }
  return NULL;
}

/* ---- DEVICE_CODE (ascend) ---------------------------------------------------------------------- */

#define MIN_ASCEND_KERNEL (MIN_STRING + 4u + 4u + 8u + 8u)
#define MAX_BLOCK_DIM 65535u

/* Call op `op` of entry `e` passes, argument by argument, what kernel `k` takes. */
static int check_ascend_calls(reader_t* r, const tide_artifact_t* art) {
  for (uint32_t e = 0; e < art->num_entries; ++e) {
    const tide_entry_decl_t* d = &art->entries[e];
    for (uint32_t o = 0; o < d->num_ops; ++o) {
      const tide_op_decl_t* op = &d->ops[o];
      const tide_ascend_kernel_t* k = &art->ascend_kernels[op->kernel];
      int same = op->num_args == k->num_args;
      for (uint32_t a = 0; same && a < op->num_args; ++a) {
        same = (op->args[a].kind == TIDE_ARG_BUFFER) == (k->kinds[a] == TIDE_ASCEND_ARG_PTR);
      }
      if (!same) {
        set_context(r, "kernel '%s'", k->name);
        return fail(r, TIDE_STATUS_DATA_LOSS,
                    "entry '%s' op %u calls it with %u arguments that do not match its %u argument kinds", d->name,
                    o, op->num_args, k->num_args);
      }
    }
  }
  return 1;
}

static int parse_ascend_code(reader_t* r, tide_artifact_t* art) {
  set_context(r, "header");
  if (!need(r, 8, "magic")) return 0;
  if (memcmp(r->data, "TIDEASCN", 8) != 0) return fail(r, TIDE_STATUS_DATA_LOSS, "bad magic (expected TIDEASCN)");
  r->pos = 8;
  uint32_t version;
  if (!rd_u32(r, &version, "version")) return 0;
  if (version != 1) return fail(r, TIDE_STATUS_UNIMPLEMENTED, "version %u (this runtime reads version 1)", version);
  const char* soc;
  if (!rd_string(r, &soc, 0, "SoC")) return 0;
  if (strcmp(soc, art->device_arch) != 0) {
    return fail(r, TIDE_STATUS_DATA_LOSS, "SoC '%s' is not the TARGET device architecture '%s'", soc, art->device_arch);
  }
  set_context(r, "kernels");
  uint32_t count;
  if (!rd_count(r, &count, MIN_ASCEND_KERNEL, "kernel count")) return 0;
  if (count != art->num_kernels) {
    return fail(r, TIDE_STATUS_DATA_LOSS, "%u kernels; the plan has %u", count, art->num_kernels);
  }
  art->ascend_kernels = tide_pool_alloc_array(r->pool, count, sizeof(tide_ascend_kernel_t));
  if (!art->ascend_kernels && count) return oom(r);
  uint8_t* seen = tide_pool_alloc_array(r->pool, count, 1);
  if (!seen && count) return oom(r);
  for (uint32_t i = 0; i < count; ++i) {
    set_context(r, "kernel %u", i);
    const char* name;
    if (!rd_string(r, &name, 0, "kernel name")) return 0;
    set_context(r, "kernel '%s'", name);
    uint32_t slot = count;
    for (uint32_t k = 0; k < art->num_kernels; ++k) {
      if (strcmp(art->kernel_names[k], name) == 0) slot = k;
    }
    if (slot == count) return fail(r, TIDE_STATUS_DATA_LOSS, "not a kernel of the plan");
    if (seen[slot]) return fail(r, TIDE_STATUS_DATA_LOSS, "listed twice");
    seen[slot] = 1;
    tide_ascend_kernel_t* k = &art->ascend_kernels[slot];
    k->name = name;
    if (!rd_u32(r, &k->block_dim, "block_dim")) return 0;
    if (k->block_dim < 1 || k->block_dim > MAX_BLOCK_DIM) {
      return fail(r, TIDE_STATUS_DATA_LOSS, "block_dim %u is outside 1..%u", k->block_dim, MAX_BLOCK_DIM);
    }
    if (!rd_count(r, &k->num_args, 1, "argument count")) return 0;
    if (k->num_args > TIDE_MAX_KERNEL_ARGS) {
      return fail(r, TIDE_STATUS_DATA_LOSS, "%u arguments exceed %d", k->num_args, TIDE_MAX_KERNEL_ARGS);
    }
    k->kinds = r->data + r->pos;
    for (uint32_t a = 0; a < k->num_args; ++a) {
      if (k->kinds[a] > TIDE_ASCEND_ARG_I64) return fail(r, TIDE_STATUS_DATA_LOSS, "argument %u: unknown kind %u", a, k->kinds[a]);
    }
    r->pos += k->num_args;
    if (!rd_u64(r, &k->hivm_size, "HIVM size")) return 0;
    if (k->hivm_size == 0) return fail(r, TIDE_STATUS_DATA_LOSS, "empty HIVM text");
    if (!need(r, k->hivm_size, "HIVM text")) return 0;
    k->hivm_offset = r->pos;
    if (memchr(r->data + r->pos, 0, (size_t)k->hivm_size)) return fail(r, TIDE_STATUS_DATA_LOSS, "HIVM text holds a NUL byte");
    r->pos += k->hivm_size;
    if (!rd_u64(r, &k->binary_size, "binary size")) return 0;
    if (!need(r, k->binary_size, "binary")) return 0;
    k->binary_offset = r->pos;
    r->pos += k->binary_size;
  }
  set_context(r, "end");
  if (r->pos != r->size) {
    return fail(r, TIDE_STATUS_DATA_LOSS, "%llu unexpected trailing bytes", (unsigned long long)(r->size - r->pos));
  }
  return check_ascend_calls(r, art);
}

/* ---- entry point ---------------------------------------------------------------------------- */

tide_status_t tide_artifact_parse(const uint8_t* data, uint64_t size, int verify_bulk_checksums,
                                  tide_artifact_t* out) {
  memset(out, 0, sizeof(*out));
  uint32_t crc[TIDE_SECTION_KIND_MAX + 1] = {0};
  tide_status_t st = parse_header(data, size, out, crc);
  for (int kind = 1; !st && kind <= TIDE_SECTION_KIND_MAX; ++kind) {
    int bulk = kind == TIDE_SECTION_WEIGHTS || kind == TIDE_SECTION_DEVICE_CODE;
    if (out->sections[kind].present && (verify_bulk_checksums || !bulk)) {
      st = verify_section_crc(data, out, kind, crc[kind]);
    }
  }
  if (!st && out->sections[TIDE_SECTION_METADATA].present) {
    st = check_metadata(data + out->sections[TIDE_SECTION_METADATA].offset,
                        out->sections[TIDE_SECTION_METADATA].size);
  }
  if (!st) {
    reader_t r = {.data = data + out->sections[TIDE_SECTION_TARGET].offset,
                  .size = out->sections[TIDE_SECTION_TARGET].size,
                  .section = "TARGET",
                  .pool = &out->pool};
    if (!parse_target(&r, out)) st = r.status;
  }
  if (!st) {
    reader_t r = {.data = data + out->sections[TIDE_SECTION_PLAN].offset,
                  .size = out->sections[TIDE_SECTION_PLAN].size,
                  .section = "PLAN",
                  .pool = &out->pool};
    if (!parse_plan(&r, out)) st = r.status;
  }
  int device = out->target_kind == TIDE_TARGET_CUDA || out->target_kind == TIDE_TARGET_ASCEND;
  if (!st && device) {
    if (!out->sections[TIDE_SECTION_DEVICE_CODE].present) {
      st = tide_make_status(TIDE_STATUS_DATA_LOSS, "a %s artifact needs a DEVICE_CODE section",
                            out->target_kind == TIDE_TARGET_CUDA ? "cuda" : "ascend");
    } else {
      reader_t r = {.data = data + out->sections[TIDE_SECTION_DEVICE_CODE].offset,
                    .size = out->sections[TIDE_SECTION_DEVICE_CODE].size,
                    .section = "DEVICE_CODE",
                    .pool = &out->pool};
      int ok = out->target_kind == TIDE_TARGET_CUDA ? parse_device_code(&r, out) : parse_ascend_code(&r, out);
      if (!ok) st = r.status;
    }
  }
  if (!st && out->target_kind == TIDE_TARGET_ASCEND && out->sections[TIDE_SECTION_KERNELS_HOST].present) {
    st = tide_make_status(TIDE_STATUS_DATA_LOSS,
                          "an ascend artifact has a KERNELS_HOST section (its kernels are in DEVICE_CODE)");
  }
  if (!st && out->target_kind != TIDE_TARGET_ASCEND && out->num_kernels > 0 &&
      !out->sections[TIDE_SECTION_KERNELS_HOST].present) {
    st = tide_make_status(TIDE_STATUS_DATA_LOSS, "the plan calls %u kernels but the artifact has no "
                          "KERNELS_HOST section", out->num_kernels);
  }
  if (st) tide_artifact_free(out);
  return st;
}

void tide_artifact_free(tide_artifact_t* artifact) {
  tide_pool_free(&artifact->pool);
  memset(artifact, 0, sizeof(*artifact));
}
