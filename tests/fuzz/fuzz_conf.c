/* libFuzzer target for the configuration loader: any bytes give either a
 * configuration or errors, never a crash, a leak or undefined behaviour.
 * Built with -DSP_CONF_NUMERIC_ONLY so host names never reach a resolver. */
#include <stddef.h>
#include <stdint.h>

#include "conf/conf.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	sp_conf_errors_t errs = {0};
	sp_conf_t *conf = sp_conf_load_buffer("fuzz.json", (const char *)data, size, &errs);
	if (conf)
		sp_conf_free(conf);
	sp_conf_errors_free(&errs);
	return 0;
}
