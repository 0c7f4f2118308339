/* Writing JSON text by hand (the admin pages stream it into a FILE, so no
 * document is built): one string writer for /stats and the server-control
 * answers alike. */
#ifndef SP_PROXY_JSON_OUT_H
#define SP_PROXY_JSON_OUT_H

#include <stdio.h>

/* s as a JSON string: quotes and backslashes escaped, control bytes as \u00XX. */
static inline void sp_json_string(FILE *f, const char *s)
{
	fputc('"', f);
	for (; *s; s++) {
		if (*s == '"' || *s == '\\')
			fprintf(f, "\\%c", *s);
		else if ((unsigned char)*s < 0x20)
			fprintf(f, "\\u%04x", *s);
		else
			fputc(*s, f);
	}
	fputc('"', f);
}

#endif
