/* Unit-test helper: configurations written in C strings with ' for ", so
 * the JSON reads without escapes. Include after <cmocka.h>. */
#ifndef SP_TEST_CONF_TEXT_H
#define SP_TEST_CONF_TEXT_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "conf/conf.h"

/* Load text (quotes swapped) as if it were the file `file`; errors go to e. */
static inline sp_conf_t *conf_text_load(const char *file, const char *text, sp_conf_errors_t *e)
{
	char *t = strdup(text);
	assert_non_null(t);
	for (char *p = t; *p; p++)
		if (*p == '\'')
			*p = '"';
	sp_conf_t *c = sp_conf_load_buffer(file, t, strlen(t), e);
	free(t);
	return c;
}

/* The same, for a text that must load without an error. */
static inline sp_conf_t *conf_text_load_ok(const char *file, const char *text)
{
	sp_conf_errors_t e = {0};
	sp_conf_t *c = conf_text_load(file, text, &e);
	sp_conf_errors_print(&e, stderr);
	assert_int_equal(e.n, 0);
	assert_non_null(c);
	sp_conf_errors_free(&e);
	return c;
}

#endif
