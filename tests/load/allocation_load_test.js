// k6 load test for POST /v1/allocate: many students, each allocating once,
// 10% of them retrying immediately with the same owner and Idempotency-Key.
//
//   BROKER_URL=http://127.0.0.1:8080 BROKER_API_TOKEN=... k6 run tests/load/allocation_load_test.js
//
// Environment:
//   BROKER_URL        broker base URL (default http://127.0.0.1:8080)
//   BROKER_API_TOKEN  track token (required)
//   API_BASE_PATH     default /v1
//   VUS               virtual users (default 64)
//   DURATION          default 30s
//   RETRY_SHARE       share of students retrying at once (default 0.10)
//   NAME_PREFIX       optional X-Sandbox-Name-Prefix sent by every student
//   RUN_ID            distinguishes student ids between runs (default: start time)
//
// The pool must hold more sandboxes than the run allocates: a 409 (no
// sandbox left) counts as a failed check. Thresholds: p99 of allocations
// under 50 ms, less than 1% failed requests, every retry answered 200 with
// the same sandbox as the first answer.
import http from 'k6/http';
import { check } from 'k6';
import { Counter, Rate, Trend } from 'k6/metrics';
import exec from 'k6/execution';

const BASE = (__ENV.BROKER_URL || 'http://127.0.0.1:8080') + (__ENV.API_BASE_PATH || '/v1');
const TOKEN = __ENV.BROKER_API_TOKEN || '';
const RETRY_SHARE = parseFloat(__ENV.RETRY_SHARE || '0.10');
const PREFIX = __ENV.NAME_PREFIX || '';
const RUN_ID = __ENV.RUN_ID || `k6-${Date.now()}`;

const allocated = new Counter('sandboxes_allocated');
const replayed = new Counter('allocations_replayed');
const replayMismatch = new Rate('replay_mismatch');
const allocLatency = new Trend('allocate_latency', true);

export const options = {
  scenarios: {
    students: {
      executor: 'constant-vus',
      vus: parseInt(__ENV.VUS || '64', 10),
      duration: __ENV.DURATION || '30s',
    },
  },
  thresholds: {
    http_req_failed: ['rate<0.01'],
    allocate_latency: ['p(99)<50', 'p(95)<25'],
    replay_mismatch: ['rate==0'],
    checks: ['rate>0.99'],
  },
};

export function setup() {
  if (!TOKEN) {
    throw new Error('set BROKER_API_TOKEN');
  }
}

function allocate(owner) {
  const headers = {
    Authorization: `Bearer ${TOKEN}`,
    'X-Instruqt-Sandbox-ID': owner,
    'Idempotency-Key': `key-${owner}`,
  };
  if (PREFIX) {
    headers['X-Sandbox-Name-Prefix'] = PREFIX;
  }
  return http.post(`${BASE}/allocate`, null, {
    headers,
    responseCallback: http.expectedStatuses(200, 201),
  });
}

export default function () {
  const owner = `${RUN_ID}-vu${exec.vu.idInTest}-i${exec.vu.iterationInScenario}`;
  const first = allocate(owner);
  const ok = check(first, {
    'allocate: 201 Created': (r) => r.status === 201,
    'allocate: has sandbox_id': (r) => r.status === 201 && !!r.json('sandbox_id'),
  });
  if (!ok) {
    return;
  }
  allocated.add(1);
  allocLatency.add(first.timings.duration);
  if (Math.random() < RETRY_SHARE) {
    const again = allocate(owner);
    const same = again.status === 200 && again.json('sandbox_id') === first.json('sandbox_id');
    check(again, { 'retry: 200 with the same sandbox': () => same });
    replayMismatch.add(!same);
    if (same) {
      replayed.add(1);
    }
  }
}
