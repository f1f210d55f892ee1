/*
 * script.h -- the script language of the fake upstream: what a test writes in a
 * data_export_id to make the fake answer as it needs. The grammar, once:
 *
 * NAME[;key=value]*, e.g. "job7;states=REQUESTED:2,COMPLETED;csv=1m":
 *   states=S[:N],...  the k-th request for this id gets the slot it falls in, the
 *                     last slot repeats; a 3-digit slot ("503") answers that status.
 *                     Without it (and without ready=): REQUESTED for 2 s, IN_PROGRESS
 *                     until 6 s, COMPLETED
 *   ready=MS          by time, not by request count: IN_PROGRESS until MS ms (at most
 *                     an hour) after the fake first saw a request for this id, then
 *                     COMPLETED; with states= too the script is bad
 *   delay=MS          wait before answering (at most an hour)
 *   status=CODE       answer CODE with {"error":"scripted CODE"} (3xx: with Location)
 *   body=invalid|big|html   broken JSON, a 1.5 MiB JSON, an HTML page
 *   close=1           drop the connection without an answer
 *   csv=SIZE          size of the CSV served for download=true when COMPLETED
 *                     (32-byte lines "%010llu,abcdefghijklmnopqrst\n"; Range works)
 *   length=0          send the CSV chunked; throttle=BYTES_PER_S; cut=K (drop after K)
 *   raw=NAME          send the bytes stored by POST /_raw?name=NAME exactly as they
 *                     are, instead of an answer (framing faults, 1xx, gzip, ...)
 * An unknown key or a bad value makes the whole script bad (the fake answers 400).
 * Pure: parsing only, no I/O.
 */
#ifndef FAKE_SCRIPT_H
#define FAKE_SCRIPT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define FAKE_CSV_DEFAULT_SIZE	  ((uint64_t)4096)
#define FAKE_MAX_STATE_SLOTS	  32
#define FAKE_MAX_STATE_REPEAT	  ((uint64_t)UINT32_MAX)
#define FAKE_MAX_DELAY_MS	  ((uint64_t)3600 * 1000)
#define FAKE_REQUESTED_FOR_MS	  2000
#define FAKE_IN_PROGRESS_UNTIL_MS 6000
/* Line numbers have 10 digits: 10^10 lines of 32 bytes, far above 64 GiB. */
#define FAKE_CSV_MAX_SIZE ((uint64_t)64 << 30)

enum fake_body { FAKE_BODY_STATE, FAKE_BODY_INVALID, FAKE_BODY_BIG, FAKE_BODY_HTML };

struct fake_state_slot {
	const char *name;
	uint64_t requests;
};

struct fake_script {
	char *storage; /* mutable copy of the id; name and state names point into it */
	const char *name;
	struct fake_state_slot states[FAKE_MAX_STATE_SLOTS];
	size_t state_count;
	bool has_ready;
	uint64_t ready_ms; /* ready=: COMPLETED from this age of the id on */
	uint64_t delay_ms;
	int status; /* 0: not scripted */
	enum fake_body body;
	bool close;
	uint64_t csv_size;
	bool chunked;
	uint64_t throttle; /* bytes per second; 0: as fast as the client reads */
	bool has_cut;
	uint64_t cut;
	const char *raw; /* NAME of a stored raw answer, or NULL */
};

enum fake_script_result { FAKE_SCRIPT_OK, FAKE_SCRIPT_BAD, FAKE_SCRIPT_NOMEM };

/* Digits only, at least one, no sign, no overflow; *end is left after the digits. */
int fake_parse_digits(const char *text, const char **end, uint64_t *value);
/* Digits only, the whole text, at most max. */
int fake_parse_u64(const char *text, uint64_t max, uint64_t *value);
/* SIZE[k|m|g], powers of 1024, at most max. */
int fake_parse_size(const char *text, uint64_t max, uint64_t *value);

/* id is NAME[;key=value]*; on failure the caller still runs fake_script_clear. */
enum fake_script_result fake_script_parse(struct fake_script *script, const char *id);
void fake_script_clear(struct fake_script *script);

/*
 * The state the authorised-th request for the id gets (counting from 1), its
 * first request age_ms ago.
 */
const char *fake_script_state(const struct fake_script *script, uint64_t authorised,
			      uint64_t age_ms);
bool fake_state_is_final(const char *state);
/* A states= slot may name an HTTP status ("503"): that status, else 0. */
int fake_state_as_status(const char *state);

#endif
