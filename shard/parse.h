/* Result of an incremental parser fed with the bytes seen so far. */
#ifndef SP_SHARD_PARSE_H
#define SP_SHARD_PARSE_H

typedef enum {
	SP_PARSE_INVALID = -1, /* these bytes can never become a valid message */
	SP_PARSE_OK = 0,       /* complete and valid */
	SP_PARSE_INCOMPLETE = 1 /* valid so far; more bytes needed */
} sp_parse_t;

#endif
