/* Identity of an address: the longest ipcache prefix that holds it, else WORLD. */
#ifndef MA_IDENTITY_H
#define MA_IDENTITY_H

#include "maps.h"

/* Reserved identities; match meshagent.model.kernel_state. */
#define MA_IDENTITY_ANY 0
#define MA_IDENTITY_HOST 1
#define MA_IDENTITY_WORLD 2

static __always_inline __u32 ma_identity_of(__u32 addr_net)
{
	struct ma_ipcache_key key = { .prefixlen = 32, .addr = addr_net };
	struct ma_ipcache_value *value = ma_ipcache.lookup(&key);

	return value ? value->identity : MA_IDENTITY_WORLD;
}

#endif /* MA_IDENTITY_H */
