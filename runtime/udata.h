/* user_data packing: every SQE carries (op, slot, generation) in its 64-bit
 * user_data so a completion finds its owner without a lookup table, and a
 * completion that arrives after its slot was freed and reused is recognised
 * by a generation mismatch and dropped. */
#ifndef SP_UDATA_H
#define SP_UDATA_H

#include <stdint.h>

/* Layout: op in the top 8 bits, generation in the next 24, slot in the low 32.
 * Trade-off: 24 generation bits wrap after 16M reuses of one slot; a stale
 * completion would have to survive that many reuses to be misread, which the
 * in-flight accounting of the owner already rules out. 32 slot bits are far
 * more than any pool needs but keep unpacking a plain mask. */
#define SP_UDATA_OP_BITS 8
#define SP_UDATA_GEN_BITS 24
#define SP_UDATA_GEN_MASK ((1u << SP_UDATA_GEN_BITS) - 1)
#define SP_UDATA_MAX_OPS (1u << SP_UDATA_OP_BITS)

static inline uint64_t sp_udata_pack(unsigned op, uint32_t slot, uint32_t gen)
{
	return ((uint64_t)(op & 0xff) << 56) | ((uint64_t)(gen & SP_UDATA_GEN_MASK) << 32) | slot;
}

static inline unsigned sp_udata_op(uint64_t ud) { return (unsigned)(ud >> 56); }
static inline uint32_t sp_udata_gen(uint64_t ud) { return (uint32_t)(ud >> 32) & SP_UDATA_GEN_MASK; }
static inline uint32_t sp_udata_slot(uint64_t ud) { return (uint32_t)ud; }

#endif
