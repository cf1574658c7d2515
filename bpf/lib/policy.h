/* Policy decision for a new connection of an endpoint.
 *
 * Two longest-prefix lookups: one for the peer's own identity, one for "any peer" (identity 0). A deny
 * from either wins over an allow (the agent also writes a more specific allow under a broader deny of the
 * same lookup as a deny, so the longest match cannot hide a deny). Deny entries apply whether or not the
 * endpoint is isolated; when no entry matches, an isolated endpoint denies by default (or audits, in
 * audit mode) and a non-isolated one allows.
 */
#ifndef MA_POLICY_H
#define MA_POLICY_H

#include "maps.h"
#include "identity.h"

struct ma_policy_result {
	__u32 rule_id;
	__u8 verdict; /* MA_VERDICT_* */
	__u8 reason;  /* MA_DROP_POLICY_* when the verdict is DENIED or AUDITED, else MA_DROP_NONE */
};

static __always_inline struct ma_policy_value *
__ma_policy_lookup(__u32 endpoint_id, __u32 peer_identity, __u8 direction, __u8 proto, __u16 dport)
{
	struct ma_policy_key key = {
		.prefixlen = MA_POLICY_PREFIX_FULL,
		.endpoint_id = endpoint_id,
		.peer_identity = peer_identity,
		.direction = direction,
		.protocol = proto,
		.dport = bpf_htons(dport),
	};
	return ma_policy.lookup(&key);
}

static __always_inline void ma_policy_decide(__u32 endpoint_id, __u32 peer_identity, __u8 direction,
					     __u8 proto, __u16 dport, int enforce, int audit,
					     struct ma_policy_result *res)
{
	struct ma_policy_value *exact = __ma_policy_lookup(endpoint_id, peer_identity, direction, proto, dport);
	struct ma_policy_value *any = NULL;

	if (peer_identity != MA_IDENTITY_ANY)
		any = __ma_policy_lookup(endpoint_id, MA_IDENTITY_ANY, direction, proto, dport);

	struct ma_policy_value *deny = NULL;
	if (exact && exact->action == MA_ACTION_DENY)
		deny = exact;
	else if (any && any->action == MA_ACTION_DENY)
		deny = any;

	if (deny) {
		res->rule_id = deny->rule_id;
		res->reason = MA_DROP_POLICY_DENIED;
		res->verdict = (deny->flags & MA_POLICY_F_AUDIT) ? MA_VERDICT_AUDITED : MA_VERDICT_DENIED;
		return;
	}

	struct ma_policy_value *allow = exact ? exact : any;
	if (allow) {
		res->rule_id = allow->rule_id;
		res->reason = MA_DROP_NONE;
		res->verdict = MA_VERDICT_ALLOWED;
		return;
	}

	res->rule_id = 0;
	if (!enforce) {
		res->reason = MA_DROP_NONE;
		res->verdict = MA_VERDICT_ALLOWED;
	} else {
		res->reason = MA_DROP_POLICY_DEFAULT_DENY;
		res->verdict = audit ? MA_VERDICT_AUDITED : MA_VERDICT_DENIED;
	}
}

#endif /* MA_POLICY_H */
