package dynamostore

import (
	"fmt"
	"math"
	"math/rand/v2"
	"strconv"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"

	broker "github.com/sandbox-broker/broker"
)

// Key prefixes of the item types. Only SBX# items carry the attributes that
// the Python service's indexes are keyed on.
const (
	sbxPrefix   = "SBX#"   // sandbox: SBX#<id> / META (the Python layout)
	sbxSK       = "META"   //
	idemPrefix  = "IDEM#"  // idempotency reservation: IDEM#<owner> / K#<key>
	evtPrefix   = "EVT#"   // audit event: EVT#<id> / <generation>#<seq>
	leasePrefix = "LEASE#" // job lease: LEASE#<name> / LEASE
	jobCfgPK    = "JOBCFG" // job settings: JOBCFG / <job>
	runPrefix   = "RUN#"   // job run: RUN#<job> / <queued_at>#<id>
	runQPrefix  = "RUNQ#"  // queued-run marker: RUNQ#<job> / <queued_at>#<id>
	runIDPrefix = "RUNID#" // run id pointer: RUNID#<id> / RUNID
)

// Attribute names of sandbox items. The first block is the Python
// service's layout (SPEC 1.2); the second is added by this store.
const (
	aPK                  = "PK"
	aSK                  = "SK"
	aSandboxID           = "sandbox_id"
	aName                = "name"
	aExternalID          = "external_id"
	aStatus              = "status"
	aOwner               = "allocated_to_track"
	aAllocatedAt         = "allocated_at"
	aLabDurationHours    = "lab_duration_hours"
	aDeletionRequestedAt = "deletion_requested_at"
	aDeletionRetryCount  = "deletion_retry_count"
	aLastSynced          = "last_synced"
	aIdemKey             = "idempotency_key"
	aTrackName           = "track_name"
	aCreatedAt           = "created_at"
	aUpdatedAt           = "updated_at"
	aSFDC                = "sfdc_account_id"

	aLabDurationSec = "lab_duration_sec" // exact duration; lab_duration_hours is kept beside it
	aExpiresAt      = "expires_at"
	aNextAttemptAt  = "next_attempt_at"
	aLeaseUntil     = "lease_until"
	aClaimToken     = "claim_token"
	aLastError      = "last_error"
	aAvailShard     = "avail_shard" // present only while available: AvailableIndex hash key
	aIdemNonce      = "idem_nonce"  // nonce of the reservation that allocated it
	aEvtGen         = "evt_gen"     // audit generation of this incarnation of the item
	aEvtSeq         = "evt_seq"     // audit sequence: bumped by every transition
)

// legacyLabDuration is the Python model's default lab_duration_hours.
const legacyLabDuration = 4 * time.Hour

// availShards is the number of AvailableIndex partitions. Writers and
// readers must agree on it, so it is a constant of the table format.
const availShards = 16

type item = map[string]types.AttributeValue

func avS(v string) types.AttributeValue { return &types.AttributeValueMemberS{Value: v} }
func avN(v int64) types.AttributeValue {
	return &types.AttributeValueMemberN{Value: strconv.FormatInt(v, 10)}
}
func avF(v float64) types.AttributeValue {
	return &types.AttributeValueMemberN{Value: strconv.FormatFloat(v, 'f', -1, 64)}
}
func avBool(v bool) types.AttributeValue { return &types.AttributeValueMemberBOOL{Value: v} }

func itemKey(pk, sk string) item { return item{aPK: avS(pk), aSK: avS(sk)} }
func sbxKey(id string) item      { return itemKey(sbxPrefix+id, sbxSK) }

// getS returns a string attribute, "" when absent or of another type.
func getS(it item, name string) string {
	if v, ok := it[name].(*types.AttributeValueMemberS); ok {
		return v.Value
	}
	return ""
}

// getF returns a number attribute, 0 when absent or unparsable.
func getF(it item, name string) float64 {
	v, ok := it[name].(*types.AttributeValueMemberN)
	if !ok {
		return 0
	}
	f, err := strconv.ParseFloat(v.Value, 64)
	if err != nil {
		return 0
	}
	return f
}

// getN returns an integer attribute (fractions truncated), 0 when absent.
func getN(it item, name string) int64 {
	v, ok := it[name].(*types.AttributeValueMemberN)
	if !ok {
		return 0
	}
	if n, err := strconv.ParseInt(v.Value, 10, 64); err == nil {
		return n
	}
	return int64(getF(it, name))
}

func getBool(it item, name string) bool {
	v, ok := it[name].(*types.AttributeValueMemberBOOL)
	return ok && v.Value
}

func has(it item, name string) bool {
	_, ok := it[name]
	return ok
}

// unix converts t to Unix seconds, 0 for the zero time.
func unix(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.Unix()
}

// fromUnix converts Unix seconds to a UTC time, the zero time for 0.
func fromUnix(sec int64) time.Time {
	if sec == 0 {
		return time.Time{}
	}
	return time.Unix(sec, 0).UTC()
}

// idFromItem returns the sandbox id of an SBX# item, from its key (always
// present, also in KEYS_ONLY projections) or its sandbox_id attribute.
func idFromItem(it item) string {
	if pk := getS(it, aPK); strings.HasPrefix(pk, sbxPrefix) {
		return strings.TrimPrefix(pk, sbxPrefix)
	}
	return getS(it, aSandboxID)
}

// decodeSandbox reads a sandbox item written by this store or by the Python
// service: optional attributes may be missing, numbers may be fractional,
// allocated_at is 0 when unallocated.
func (s *Store) decodeSandbox(it item) broker.Sandbox {
	sb := broker.Sandbox{
		ID:                  idFromItem(it),
		Name:                getS(it, aName),
		ExternalID:          getS(it, aExternalID),
		SFDCAccountID:       getS(it, aSFDC),
		Status:              broker.Status(getS(it, aStatus)),
		Owner:               getS(it, aOwner),
		TrackName:           getS(it, aTrackName),
		IdempotencyKey:      getS(it, aIdemKey),
		AllocatedAt:         fromUnix(getN(it, aAllocatedAt)),
		DeletionRequestedAt: fromUnix(getN(it, aDeletionRequestedAt)),
		DeletionAttempts:    int(getN(it, aDeletionRetryCount)),
		NextAttemptAt:       fromUnix(getN(it, aNextAttemptAt)),
		LeaseUntil:          fromUnix(getN(it, aLeaseUntil)),
		ClaimToken:          getS(it, aClaimToken),
		LastError:           getS(it, aLastError),
		CreatedAt:           fromUnix(getN(it, aCreatedAt)),
		UpdatedAt:           fromUnix(getN(it, aUpdatedAt)),
		LastSynced:          fromUnix(getN(it, aLastSynced)),
	}
	if !sb.AllocatedAt.IsZero() {
		sb.LabDuration = s.labDuration(it)
		sb.ExpiresAt = fromUnix(getN(it, aExpiresAt))
		if sb.ExpiresAt.IsZero() {
			sb.ExpiresAt = broker.ExpiresAt(sb.AllocatedAt, sb.LabDuration)
		}
	}
	return sb
}

// labDuration is the lab duration stored with an allocation: exact seconds
// when this store wrote it, else the Python service's hours.
func (s *Store) labDuration(it item) time.Duration {
	if has(it, aLabDurationSec) {
		return time.Duration(getN(it, aLabDurationSec)) * time.Second
	}
	if s.cfg.LegacyLabDuration > 0 {
		return s.cfg.LegacyLabDuration
	}
	if has(it, aLabDurationHours) {
		return time.Duration(math.Round(getF(it, aLabDurationHours) * float64(time.Hour)))
	}
	return legacyLabDuration
}

// expiresAt is decodeSandbox's ExpiresAt without decoding the whole item.
func (s *Store) expiresAt(it item) time.Time {
	if e := getN(it, aExpiresAt); e != 0 {
		return fromUnix(e)
	}
	return broker.ExpiresAt(fromUnix(getN(it, aAllocatedAt)), s.labDuration(it))
}

// randomShard returns an AvailableIndex hash key, spreading available
// sandboxes over availShards partitions.
func randomShard() string { return shardKey(rand.IntN(availShards)) }

func shardKey(i int) string { return fmt.Sprintf("A#%02d", i) }

// sandboxName is the name stored for an account: the name is a key of
// AvailableIndex and may not be empty, so the Python fallback applies.
func sandboxName(a broker.Account) string {
	if a.Name == "" {
		return "sandbox-" + a.ID
	}
	return a.Name
}

// newSandboxItem is the item sync inserts for a new account: the Python
// layout (allocated_at 0, deletion_retry_count 0, optional strings omitted)
// plus the shard and the audit generation.
func newSandboxItem(a broker.Account, now time.Time, gen string) item {
	created := a.CreatedAt
	if created.IsZero() {
		created = now
	}
	it := item{
		aPK:                 avS(sbxPrefix + a.ID),
		aSK:                 avS(sbxSK),
		aSandboxID:          avS(a.ID),
		aName:               avS(sandboxName(a)),
		aStatus:             avS(string(broker.StatusAvailable)),
		aAllocatedAt:        avN(0),
		aDeletionRetryCount: avN(0),
		aCreatedAt:          avN(unix(created)),
		aUpdatedAt:          avN(unix(now)),
		aLastSynced:         avN(unix(now)),
		aAvailShard:         avS(randomShard()),
		aEvtGen:             avS(gen),
		aEvtSeq:             avN(1),
	}
	if a.ExternalID != "" {
		it[aExternalID] = avS(a.ExternalID)
	}
	if a.SFDCAccountID != "" {
		it[aSFDC] = avS(a.SFDCAccountID)
	}
	return it
}

// update builds an UpdateExpression: every attribute appears as #attr and
// its new value as :attr, so condition values must use other names.
type update struct {
	sets, removes, adds []string
	vals                item
}

func newUpdate() *update { return &update{vals: item{}} }

func (u *update) set(attr string, v types.AttributeValue) *update {
	u.sets = append(u.sets, "#"+attr+" = :"+attr)
	u.vals[":"+attr] = v
	return u
}

// setExpr adds "#attr = expr" with the values expr uses.
func (u *update) setExpr(attr, expr string, vals item) *update {
	u.sets = append(u.sets, "#"+attr+" = "+expr)
	for k, v := range vals {
		u.vals[k] = v
	}
	return u
}

// setStr sets a string attribute, or removes it when v is empty: the
// Python layout omits empty strings, and index keys may not be empty.
func (u *update) setStr(attr, v string) *update {
	if v == "" {
		return u.remove(attr)
	}
	return u.set(attr, avS(v))
}

// setTime sets a Unix-seconds attribute, or removes it for the zero time.
func (u *update) setTime(attr string, t time.Time) *update {
	if t.IsZero() {
		return u.remove(attr)
	}
	return u.set(attr, avN(t.Unix()))
}

func (u *update) remove(attrs ...string) *update {
	for _, a := range attrs {
		u.removes = append(u.removes, "#"+a)
	}
	return u
}

// transition bumps the audit sequence and gives legacy items a generation,
// so that the write's ALL_NEW image says where its event goes.
func (u *update) transition() *update {
	u.setExpr(aEvtGen, "if_not_exists(#evt_gen, :evt_gen)", item{":evt_gen": avS(newGeneration())})
	u.adds = append(u.adds, "#evt_seq :evt_one")
	u.vals[":evt_one"] = avN(1)
	return u
}

func (u *update) expr() string {
	var parts []string
	if len(u.sets) > 0 {
		parts = append(parts, "SET "+strings.Join(u.sets, ", "))
	}
	if len(u.removes) > 0 {
		parts = append(parts, "REMOVE "+strings.Join(u.removes, ", "))
	}
	if len(u.adds) > 0 {
		parts = append(parts, "ADD "+strings.Join(u.adds, ", "))
	}
	return strings.Join(parts, " ")
}

// values merges the update's values with a condition's.
func (u *update) values(cond item) item {
	out := make(item, len(u.vals)+len(cond))
	for k, v := range u.vals {
		out[k] = v
	}
	for k, v := range cond {
		out[k] = v
	}
	return out
}

// newGeneration starts the audit trail of a new incarnation of an item:
// wall-clock nanoseconds, so that a sandbox deleted and synced again sorts
// its new events after the old ones.
func newGeneration() string { return fmt.Sprintf("%020d", time.Now().UnixNano()) }
