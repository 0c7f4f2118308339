/* relay: the op map every engine tags its operations with, and the choice
 * of engine for the configured "relay". */
#include "shard/relay.h"
#include "shard/context.h"

const sp_relay_op_t sp_relay_ops[SP_OP_MAX] = {
	[SP_OP_RECV_UP] = {SP_RELAY_RECV, SP_UP},
	[SP_OP_RECV_DOWN] = {SP_RELAY_RECV, SP_DOWN},
	[SP_OP_SEND_UP] = {SP_RELAY_SEND, SP_UP},
	[SP_OP_SEND_DOWN] = {SP_RELAY_SEND, SP_DOWN},
	[SP_OP_POLL_IN_UP] = {SP_RELAY_POLL_IN, SP_UP},
	[SP_OP_POLL_IN_DOWN] = {SP_RELAY_POLL_IN, SP_DOWN},
	[SP_OP_POLL_OUT_UP] = {SP_RELAY_POLL_OUT, SP_UP},
	[SP_OP_POLL_OUT_DOWN] = {SP_RELAY_POLL_OUT, SP_DOWN},
	[SP_OP_RECV_SPARE_UP] = {SP_RELAY_RECV_SPARE, SP_UP},
	[SP_OP_RECV_SPARE_DOWN] = {SP_RELAY_RECV_SPARE, SP_DOWN},
	[SP_OP_SEND_SPARE_UP] = {SP_RELAY_SEND_SPARE, SP_UP},
	[SP_OP_SEND_SPARE_DOWN] = {SP_RELAY_SEND_SPARE, SP_DOWN},
};

unsigned sp_relay_op(sp_relay_kind_t kind, int d)
{
	static const unsigned ops[][2] = {
		[SP_RELAY_RECV] = {SP_OP_RECV_UP, SP_OP_RECV_DOWN},
		[SP_RELAY_SEND] = {SP_OP_SEND_UP, SP_OP_SEND_DOWN},
		[SP_RELAY_POLL_IN] = {SP_OP_POLL_IN_UP, SP_OP_POLL_IN_DOWN},
		[SP_RELAY_POLL_OUT] = {SP_OP_POLL_OUT_UP, SP_OP_POLL_OUT_DOWN},
		[SP_RELAY_RECV_SPARE] = {SP_OP_RECV_SPARE_UP, SP_OP_RECV_SPARE_DOWN},
		[SP_RELAY_SEND_SPARE] = {SP_OP_SEND_SPARE_UP, SP_OP_SEND_SPARE_DOWN},
	};
	return ops[kind][d];
}

/* Engines declare what they need (needs_bufs, needs_pipes): "auto" starts
 * every direction on copy and moves bulk ones to splice (relay_copy.c,
 * watch_bulk), so it needs both resources. */
const sp_relay_engine_t *sp_relay_engine_for(sp_relay_t relay)
{
	switch (relay) {
	case SP_RELAY_COPY:
		return &sp_relay_copy;
	case SP_RELAY_SPLICE:
		return &sp_relay_splice;
	case SP_RELAY_AUTO:
		break;
	}
	return &sp_relay_auto;
}
