package dynamostore

import (
	"context"
	"errors"
	"math/rand/v2"
	"sort"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"

	broker "github.com/sandbox-broker/broker"
)

// Allocation tuning. See PROTOCOL.md for how they bound the work.
const (
	candidatePage    = 100                    // AvailableIndex items read per query
	candidateTake    = 3                      // of which at most this many are tried before reading again
	randomShardTries = 2                      // shards read before StatusIndex, without a prefix
	backoffBase      = 10 * time.Millisecond  // first pause after a page of lost claims
	backoffStep      = 200 * time.Millisecond // longest single pause
	backoffBudget    = 2 * time.Second        // total pauses of one allocation
	maxPickRounds    = 200                    // candidate reads of one allocation
	maxOuterRounds   = 400                    // reservation reads of one allocation
	waitPollMin      = 10 * time.Millisecond  // first re-read of a pending reservation
	waitPollMax      = 200 * time.Millisecond //
	reservationSK    = "K#"                   // prefix of a reservation's sort key
	reservationTTL   = 30 * 24 * time.Hour    // ttl attribute of reservations
	statePending     = "pending"
	stateLinked      = "linked"
	attrResState     = "res_state"
	attrResNonce     = "res_nonce"
	attrResCand      = "res_candidate"
	attrResSandbox   = "res_sandbox"
	attrResReserved  = "reserved_ms"
)

// errContention is returned when an allocation kept losing races for
// sandboxes that the indexes still show as available.
var errContention = broker.Errorf(broker.EUNAVAILABLE, "too many concurrent allocations, retry shortly")

func noSandbox() error {
	return broker.Errorf(broker.ENOSANDBOX, "no sandbox available in the pool")
}

// Allocate gives req.Owner one available sandbox, or returns the sandbox
// that (Owner, Key) already holds with Replayed set. It follows the
// reservation protocol of PROTOCOL.md: an IDEM#<owner>/K#<key> item,
// created with a conditional put, names the one allocation in progress for
// the pair and the one sandbox it is trying to claim; whoever finds it
// pending may finish it, so concurrent duplicates and requests left
// half-done by a crash converge on one sandbox. Returns EINVALID without
// owner or key, ENOSANDBOX when the index shows no matching available
// sandbox, EUNAVAILABLE when DynamoDB cannot be reached or when contention
// persists after about 2 s of backoff.
func (s *Store) Allocate(ctx context.Context, req broker.AllocateRequest) (broker.Allocation, error) {
	if req.Owner == "" || req.Key == "" {
		return broker.Allocation{}, broker.Errorf(broker.EINVALID, "owner and idempotency key are required")
	}
	a := &allocation{s: s, req: req, key: itemKey(idemPrefix+req.Owner, reservationSK+req.Key)}
	a.pick = &picker{s: s, prefix: req.NamePrefix, lost: map[string]bool{}}
	return a.run(ctx)
}

// allocation is the state of one Allocate call.
type allocation struct {
	s     *Store
	req   broker.AllocateRequest
	key   item    // the reservation's key
	nonce string  // nonce of the reservation this call created, if any
	pick  *picker // candidates, remembering the ones lost
}

// reservation is a decoded IDEM# item.
type reservation struct {
	state     string
	nonce     string
	candidate string // while pending: the only sandbox this operation may claim
	sandbox   string // once linked: the sandbox it claimed
	reserved  time.Time
	// The operation's parameters, so that a helper claims exactly what the
	// original request would have.
	now      time.Time
	track    string
	duration time.Duration
	prefix   string
}

func decodeReservation(it item) reservation {
	return reservation{
		state:     getS(it, attrResState),
		nonce:     getS(it, attrResNonce),
		candidate: getS(it, attrResCand),
		sandbox:   getS(it, attrResSandbox),
		reserved:  time.UnixMilli(getN(it, attrResReserved)),
		now:       fromUnix(getN(it, "op_now")),
		track:     getS(it, "op_track"),
		duration:  time.Duration(getN(it, "op_duration_sec")) * time.Second,
		prefix:    getS(it, "op_prefix"),
	}
}

// errRestart makes run read the reservation again.
var errRestart = errors.New("reservation changed")

func (a *allocation) run(ctx context.Context) (broker.Allocation, error) {
	poll := waitPollMin
	for round := 0; round < maxOuterRounds; round++ {
		it, err := a.s.getItem(ctx, a.key)
		if err != nil {
			return broker.Allocation{}, err
		}
		var out broker.Allocation
		switch res := decodeReservation(it); {
		case it == nil:
			out, err = a.begin(ctx, nil)
		case res.state == stateLinked:
			out, err = a.linked(ctx, res)
		case a.nonce != "" && res.nonce == a.nonce:
			// Our own operation (e.g. an SDK retry of our put succeeded).
			out, err = a.drive(ctx, res)
		case time.Since(res.reserved) < a.s.cfg.RecoverAfter:
			// Another request is allocating for this pair: wait for it.
			if err := sleep(ctx, jitter(poll)); err != nil {
				return broker.Allocation{}, err
			}
			poll = min(2*poll, waitPollMax)
			continue
		default:
			// Pending for long: its request is slow or gone. Finish it.
			out, err = a.drive(ctx, res)
		}
		if errors.Is(err, errRestart) {
			continue
		}
		return out, err
	}
	return broker.Allocation{}, errContention
}

// linked handles a reservation whose operation finished: replay its sandbox
// if the pair still holds it, else the reservation is stale and a new
// operation replaces it.
func (a *allocation) linked(ctx context.Context, res reservation) (broker.Allocation, error) {
	sb, held, err := a.held(ctx, res.sandbox)
	if err != nil {
		return broker.Allocation{}, err
	}
	if held {
		return broker.Allocation{Sandbox: sb, Replayed: res.nonce != a.nonce}, nil
	}
	return a.begin(ctx, &res)
}

// held reads sandbox id and reports whether the pair holds it.
func (a *allocation) held(ctx context.Context, id string) (broker.Sandbox, bool, error) {
	if id == "" {
		return broker.Sandbox{}, false, nil
	}
	sb, err := a.s.Get(ctx, id)
	if broker.ErrorCode(err) == broker.ENOTFOUND {
		return sb, false, nil
	}
	if err != nil {
		return sb, false, err
	}
	return sb, sb.Status == broker.StatusAllocated && sb.Owner == a.req.Owner && sb.IdempotencyKey == a.req.Key, nil
}

// begin starts a new operation for the pair: it first adopts a sandbox the
// pair already holds without a reservation (allocated by the Python
// service), then picks a candidate and writes the reservation, conditional
// on no reservation (prev == nil) or on the stale one it replaces.
func (a *allocation) begin(ctx context.Context, prev *reservation) (broker.Allocation, error) {
	cond, vals := "attribute_not_exists(#PK)", item(nil)
	if prev != nil {
		cond = "#res_state = :linked AND #res_nonce = :old"
		vals = item{":linked": avS(stateLinked), ":old": avS(prev.nonce)}
	}
	// Look for a held sandbox and for a candidate at the same time: both
	// are reads, and a held sandbox makes the candidate moot.
	var (
		sb      broker.Sandbox
		held    bool
		heldErr error
		done    = make(chan struct{})
	)
	go func() {
		defer close(done)
		sb, held, heldErr = a.findHeld(ctx)
	}()
	cand, err := a.pick.next(ctx)
	<-done
	if heldErr != nil {
		return broker.Allocation{}, heldErr
	}
	if held {
		rec := a.reservationItem(newToken(), sb.ID, a.req)
		rec[attrResState], rec[attrResSandbox] = avS(stateLinked), avS(sb.ID)
		written, err := a.s.putItem(ctx, rec, cond, vals)
		if err != nil {
			return broker.Allocation{}, err
		}
		if !written {
			return broker.Allocation{}, errRestart
		}
		return broker.Allocation{Sandbox: sb, Replayed: true}, nil
	}
	if broker.ErrorCode(err) == broker.ENOSANDBOX {
		// A duplicate may have taken the last sandbox for this pair
		// meanwhile: answer with its outcome rather than "none".
		it, rerr := a.s.getItem(ctx, a.key)
		if rerr != nil {
			return broker.Allocation{}, rerr
		}
		if it != nil && (prev == nil || getS(it, attrResNonce) != prev.nonce) {
			return broker.Allocation{}, errRestart
		}
	}
	if err != nil {
		return broker.Allocation{}, err
	}
	nonce := newToken()
	a.nonce = nonce // set before the put: an SDK retry may report our own write as a conflict
	rec := a.reservationItem(nonce, cand, a.req)
	written, err := a.s.putItem(ctx, rec, cond, vals)
	if err != nil {
		return broker.Allocation{}, err
	}
	if !written {
		return broker.Allocation{}, errRestart
	}
	return a.drive(ctx, decodeReservation(rec))
}

func (a *allocation) reservationItem(nonce, cand string, req broker.AllocateRequest) item {
	now := time.Now()
	it := itemKey(getS(a.key, aPK), getS(a.key, aSK))
	it[attrResState] = avS(statePending)
	it[attrResNonce] = avS(nonce)
	it[attrResCand] = avS(cand)
	it[attrResReserved] = avN(now.UnixMilli())
	it["op_now"] = avN(unix(req.Now))
	it["op_duration_sec"] = avN(int64(req.LabDuration / time.Second))
	if req.TrackName != "" {
		it["op_track"] = avS(req.TrackName)
	}
	if req.NamePrefix != "" {
		it["op_prefix"] = avS(req.NamePrefix)
	}
	it["ttl"] = avN(now.Add(reservationTTL).Unix())
	return it
}

// findHeld looks for a sandbox allocated to the pair without a live
// reservation (IdempotencyIndex, then a consistent read to confirm).
func (a *allocation) findHeld(ctx context.Context) (broker.Sandbox, bool, error) {
	var ids []string
	err := a.s.queryAll(ctx, &dynamodb.QueryInput{
		TableName:              a.s.table,
		IndexName:              aws.String(a.s.cfg.IdempotencyIndex),
		KeyConditionExpression: aws.String("#idempotency_key = :key"),
		FilterExpression:       aws.String("#status = :allocated AND #allocated_to_track = :owner"),
		ProjectionExpression:   aws.String("#PK"),
		ExpressionAttributeValues: item{
			":key":       avS(a.req.Key),
			":allocated": avS(string(broker.StatusAllocated)),
			":owner":     avS(a.req.Owner),
		},
	}, func(it item) error {
		ids = append(ids, idFromItem(it))
		return nil
	})
	if err != nil {
		return broker.Sandbox{}, false, err
	}
	for _, id := range ids { // oldest allocation first
		sb, ok, err := a.held(ctx, id)
		if err != nil || ok {
			return sb, ok, err
		}
	}
	return broker.Sandbox{}, false, nil
}

// drive completes the pending operation res: claim its candidate, moving
// the candidate on (compare-and-swap on the reservation) each time the
// candidate turns out to be taken by someone else, then link the claimed
// sandbox. Any party may drive an operation; all of them only ever claim
// the reservation's current candidate, so one operation claims at most one
// sandbox.
func (a *allocation) drive(ctx context.Context, res reservation) (broker.Allocation, error) {
	if res.prefix != a.pick.prefix {
		// Finish someone else's operation on its own terms.
		a.pick = &picker{s: a.s, prefix: res.prefix, lost: a.pick.lost}
	}
	for {
		sb, claimed, record, err := a.claim(ctx, res)
		if err != nil {
			return broker.Allocation{}, err
		}
		if claimed {
			done := make(chan struct{})
			go func() {
				defer close(done)
				record() // the audit event, while the link is written
			}()
			ok, err := a.link(ctx, res)
			<-done
			if err != nil {
				return broker.Allocation{}, err
			}
			if !ok {
				return broker.Allocation{}, errRestart
			}
			return broker.Allocation{Sandbox: sb, Replayed: res.nonce != a.nonce}, nil
		}
		a.pick.lost[res.candidate] = true
		next, err := a.pick.next(ctx)
		if broker.ErrorCode(err) == broker.ENOSANDBOX || errors.Is(err, errContention) {
			// Nothing left, or no luck: abandon the operation (unless it
			// changed), so that a retry starts afresh without waiting.
			_, ok, derr := a.s.deleteItem(ctx, a.key, pendingCond, pendingVals(res))
			if derr != nil {
				return broker.Allocation{}, derr
			}
			if !ok {
				return broker.Allocation{}, errRestart
			}
			return broker.Allocation{}, err
		}
		if err != nil {
			return broker.Allocation{}, err
		}
		_, ok, err := a.s.updateItem(ctx, a.key, newUpdate().set(attrResCand, avS(next)), pendingCond, pendingVals(res), false)
		if err != nil {
			return broker.Allocation{}, err
		}
		if !ok {
			return broker.Allocation{}, errRestart
		}
		res.candidate = next
	}
}

// pendingCond holds while the reservation is the same pending operation
// with the same candidate.
const pendingCond = "#res_state = :pending AND #res_nonce = :nonce AND #res_candidate = :cand"

func pendingVals(res reservation) item {
	return item{":pending": avS(statePending), ":nonce": avS(res.nonce), ":cand": avS(res.candidate)}
}

// claim tries to allocate the operation's candidate: an update conditional
// on status = available. If the condition fails, the candidate may already
// have been claimed by this very operation (another party driving it, or a
// retried request): the item returned with the failed condition (or a
// consistent read) tells. record writes the audit event of a claim this
// call made (a no-op otherwise).
func (a *allocation) claim(ctx context.Context, res reservation) (sb broker.Sandbox, claimed bool, record func(), err error) {
	record = func() {}
	now := res.now
	u := newUpdate().
		set(aStatus, avS(string(broker.StatusAllocated))).
		set(aOwner, avS(a.req.Owner)).
		set(aIdemKey, avS(a.req.Key)).
		set(aAllocatedAt, avN(unix(now))).
		set(aLabDurationSec, avN(int64(res.duration/time.Second))).
		set(aLabDurationHours, avF(res.duration.Hours())).
		set(aExpiresAt, avN(unix(broker.ExpiresAt(now, res.duration)))).
		set(aUpdatedAt, avN(unix(now))).
		set(aIdemNonce, avS(res.nonce)).
		set(aDeletionRetryCount, avN(0)).
		setStr(aTrackName, res.track).
		remove(aAvailShard, aDeletionRequestedAt, aNextAttemptAt, aLastError, aClaimToken, aLeaseUntil).
		transition()
	img, ok, err := a.s.updateItem(ctx, sbxKey(res.candidate), u, "attribute_exists(#PK) AND #status = :available",
		item{":available": avS(string(broker.StatusAvailable))}, true)
	if err != nil {
		return sb, false, record, err
	}
	if ok {
		record = func() { a.s.event(ctx, res.candidate, img, broker.StatusAvailable, broker.StatusAllocated, now) }
		return a.s.decodeSandbox(img), true, record, nil
	}
	cur := img // the image DynamoDB returned with the failed condition
	if cur == nil {
		if cur, err = a.s.getItem(ctx, sbxKey(res.candidate)); err != nil {
			return sb, false, record, err
		}
	}
	if cur != nil && getS(cur, aStatus) == string(broker.StatusAllocated) && getS(cur, aIdemNonce) == res.nonce {
		return a.s.decodeSandbox(cur), true, record, nil
	}
	return sb, false, record, nil
}

// link marks the operation done: the reservation now names its sandbox.
// False when the reservation changed (e.g. another party linked it).
func (a *allocation) link(ctx context.Context, res reservation) (bool, error) {
	u := newUpdate().set(attrResState, avS(stateLinked)).set(attrResSandbox, avS(res.candidate))
	_, ok, err := a.s.updateItem(ctx, a.key, u, pendingCond, pendingVals(res), false)
	return ok, err
}

// picker reads candidate sandboxes from AvailableIndex, whose keys are
// spread over availShards partitions. Without a name prefix it reads one
// partition at a time, in random order, a page of candidatePage keys of
// which a random few are tried, so that concurrent allocators spread over
// the pool instead of fighting for the head of one index (B-15). With a
// prefix the query is begins_with on the index's sort key, so a match
// anywhere in the pool is found without reading non-matching sandboxes
// (B-17); the first read then queries every partition in parallel and
// tries the smallest matching name first (the order the SQLite store
// allocates in), and only after a lost race falls back to random picks.
type picker struct {
	s      *Store
	prefix string
	lost   map[string]bool // sandboxes seen taken: the index may lag
	queue  []string
	reads  int
	slept  time.Duration
}

// next returns the next candidate, ENOSANDBOX when every shard shows no
// matching available sandbox (other than the lost ones), or errContention.
func (p *picker) next(ctx context.Context) (string, error) {
	for len(p.queue) > 0 {
		id := p.queue[0]
		p.queue = p.queue[1:]
		if !p.lost[id] {
			return id, nil
		}
	}
	if p.reads >= maxPickRounds {
		return "", errContention
	}
	if len(p.lost) > 0 {
		// The previous candidates were taken: back off a little, within a
		// total budget, before reading the index again.
		d := jitter(min(backoffBase<<min(max(p.reads-1, 0), 8), backoffStep))
		if p.slept+d <= backoffBudget {
			p.slept += d
			if err := sleep(ctx, d); err != nil {
				return "", err
			}
		}
	}
	p.reads++
	if p.prefix != "" && len(p.lost) == 0 {
		return p.smallest(ctx)
	}
	shards := rand.Perm(availShards)
	if p.prefix == "" {
		shards = shards[:randomShardTries]
	}
	for _, shard := range shards {
		cands, err := p.readShard(ctx, shardKey(shard), candidatePage)
		if err != nil {
			return "", err
		}
		if len(cands) > 0 {
			return p.take(cands), nil
		}
	}
	if p.prefix == "" {
		// A few random shards were empty: the pool is nearly drained.
		// StatusIndex holds every available sandbox in one partition, so
		// one query finds what is left, or proves there is nothing.
		cands, err := p.readStatusIndex(ctx)
		if err != nil {
			return "", err
		}
		if len(cands) > 0 {
			return p.take(cands), nil
		}
	}
	return "", noSandbox()
}

// take returns a random candidate and queues a few more.
func (p *picker) take(cands []candidate) string {
	rand.Shuffle(len(cands), func(i, j int) { cands[i], cands[j] = cands[j], cands[i] })
	for _, c := range cands[1:min(len(cands), candidateTake)] {
		p.queue = append(p.queue, c.id)
	}
	return cands[0].id
}

// readStatusIndex returns the first page of available sandboxes in
// StatusIndex that holds any not yet lost.
func (p *picker) readStatusIndex(ctx context.Context) ([]candidate, error) {
	in := p.s.statusQuery(broker.StatusAvailable, "", "#PK, #name", nil)
	in.Limit = aws.Int32(candidatePage)
	in.ExpressionAttributeNames = names(in.KeyConditionExpression, in.ProjectionExpression)
	return p.readPages(ctx, in)
}

// smallest reads the first few matches of every shard in parallel and
// queues them by name.
func (p *picker) smallest(ctx context.Context) (string, error) {
	var mu sync.Mutex
	var all []candidate
	err := parallel(ctx, availShards, availShards, func(ctx context.Context, i int) error {
		cands, err := p.readShard(ctx, shardKey(i), candidateTake)
		mu.Lock()
		all = append(all, cands...)
		mu.Unlock()
		return err
	})
	if err != nil {
		return "", err
	}
	if len(all) == 0 {
		return "", noSandbox()
	}
	sort.Slice(all, func(i, j int) bool { return all[i].name < all[j].name })
	rest := all[1:min(len(all), candidateTake)] // tried after a lost race: in random order
	rand.Shuffle(len(rest), func(i, j int) { rest[i], rest[j] = rest[j], rest[i] })
	for _, c := range rest {
		p.queue = append(p.queue, c.id)
	}
	return all[0].id, nil
}

type candidate struct{ id, name string }

// readShard returns the first page (of up to limit keys) of one shard that
// holds any candidate not yet lost, paging past lost ones.
func (p *picker) readShard(ctx context.Context, shard string, limit int32) ([]candidate, error) {
	in := &dynamodb.QueryInput{
		TableName:                 p.s.table,
		IndexName:                 aws.String(p.s.cfg.AvailableIndex),
		KeyConditionExpression:    aws.String("#avail_shard = :shard"),
		ExpressionAttributeValues: item{":shard": avS(shard)},
		Limit:                     aws.Int32(limit),
	}
	if p.prefix != "" {
		in.KeyConditionExpression = aws.String("#avail_shard = :shard AND begins_with(#name, :prefix)")
		in.ExpressionAttributeValues[":prefix"] = avS(p.prefix)
	}
	in.ExpressionAttributeNames = names(in.KeyConditionExpression)
	return p.readPages(ctx, in)
}

// readPages returns the first page of in's results that holds any
// candidate not yet lost, paging past lost ones.
func (p *picker) readPages(ctx context.Context, in *dynamodb.QueryInput) ([]candidate, error) {
	for {
		out, err := p.s.db.Query(ctx, in)
		if err != nil {
			return nil, dbErr(err)
		}
		var cands []candidate
		for _, it := range out.Items {
			if id := idFromItem(it); !p.lost[id] {
				cands = append(cands, candidate{id, getS(it, aName)})
			}
		}
		if len(cands) > 0 || len(out.LastEvaluatedKey) == 0 {
			return cands, nil
		}
		in.ExclusiveStartKey = out.LastEvaluatedKey
	}
}

// jitter returns a random duration in [d/2, d].
func jitter(d time.Duration) time.Duration {
	if d <= 1 {
		return d
	}
	return d/2 + rand.N(d/2+1)
}
