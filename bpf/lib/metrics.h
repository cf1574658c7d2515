/* Per-CPU packet and byte counters by (reason, direction); reason 0 counts forwarded packets. */
#ifndef MA_METRICS_H
#define MA_METRICS_H

#include "maps.h"

static __always_inline void ma_count(__u8 reason, __u8 direction, __u32 bytes)
{
	__u32 index = ((__u32)(reason & (MA_METRICS_REASONS - 1))) * 2 + (direction & 1);
	struct ma_metrics_value *value = ma_metrics.lookup(&index);

	/* Per-CPU slots: no other CPU writes this one, plain adds suffice. */
	if (value) {
		value->packets += 1;
		value->bytes += bytes;
	}
}

#endif /* MA_METRICS_H */
