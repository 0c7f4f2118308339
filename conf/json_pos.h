/* json_pos: where each value (and each object key) of a JSON text starts.
 * jansson forgets positions once it has built its tree, so conf/ scans the
 * same text again and walks this map alongside jansson's tree. */
#ifndef SP_JSON_POS_H
#define SP_JSON_POS_H

#include <stddef.h>

#define SP_JNONE ((size_t)-1) /* "no such node"; every function accepts it */

typedef struct {
	unsigned line, col; /* 1-based; columns count characters, as jansson's do */
} sp_jpos_t;

typedef struct sp_jmap sp_jmap_t;

/* Build the map of text, which must already be valid JSON (jansson accepted
 * it). Returns 0, -ENOMEM, or -EINVAL if the text does not scan. */
int sp_jmap_build(sp_jmap_t **out, const char *text, size_t len);
void sp_jmap_free(sp_jmap_t *m);

size_t sp_jmap_root(const sp_jmap_t *m);
/* The value of member key of object node obj, or SP_JNONE. */
size_t sp_jmap_member(const sp_jmap_t *m, size_t obj, const char *key);
/* Element i of array node arr, or SP_JNONE. */
size_t sp_jmap_elem(const sp_jmap_t *m, size_t arr, size_t i);
/* Position of a value's first character; {0, 0} for SP_JNONE. */
sp_jpos_t sp_jmap_pos(const sp_jmap_t *m, size_t node);
/* Position of the opening quote of the key naming this member. */
sp_jpos_t sp_jmap_key_pos(const sp_jmap_t *m, size_t node);

#endif
