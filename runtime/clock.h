/* clock: milliseconds on CLOCK_MONOTONIC, the one clock every timeout and
 * deadline of the program is measured on (never the wall clock, which an
 * operator or NTP may step). */
#ifndef SP_CLOCK_H
#define SP_CLOCK_H

#include <stdint.h>

uint64_t sp_clock_ms(void);

#endif
