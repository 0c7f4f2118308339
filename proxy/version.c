/* version: see version.h. */
#include "proxy/version.h"

const char sp_version[32] = SP_VERSION_BASE SP_VERSION_EXTRA;
