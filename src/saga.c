/*
 * saga.c — saga state tracking: the SQL functions of API.md section 4 and
 * the saga maintenance tasks.
 *
 * Owns the state machine over the tables of sql/install/40_saga.sql, which
 * no role but apicore's owner may write: every entry point works as that
 * owner (SagaEnter, through ApicoreBecome), and a local step's function runs
 * as the role that defined the saga (CallLocalBody), after checks that it
 * can still be called (LocalFunctionProblem).
 *
 *   saga.state:      running -> completed
 *                    running -> compensating -> compensated | cancelled
 *                    compensating -> failed (dead letter) -> operator retry / resolve
 *   saga_step.state: runnable -> claimed -> succeeded | runnable (retry) | failed
 *                    runnable | claimed -> cancelled (cancel, resolve)
 *
 * A saga's row lock serialises its transitions: every function that moves a
 * saga locks its row first, then its step rows, so two of them never
 * deadlock.  saga_claim only locks runnable step rows (SKIP LOCKED) and
 * heartbeat only a claimed one; neither waits for a saga lock.  Every
 * transition is compare-and-set on (saga, step, attempt) and is appended to
 * apicore.saga_transition with its actor and reason.
 *
 * All SQL goes through plans prepared once per backend (SagaExec).
 */
#include "postgres.h"

#include <sodium.h>

#include "access/genam.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_class.h"
#include "catalog/pg_proc.h"
#include "catalog/pg_type.h"
#include "commands/async.h"
#include "commands/sequence.h"
#include "commands/trigger.h"
#include "common/int.h"
#include "executor/executor.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "parser/parse_func.h"
#include "storage/ipc.h"
#include "storage/shmem.h"
#include "tcop/utility.h"
#include "utils/acl.h"
#include "utils/fmgroids.h"
#include "utils/rls.h"
#include "utils/snapmgr.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/datetime.h"
#include "utils/guc.h"
#include "utils/inval.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/regproc.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"
#include "utils/uuid.h"

#include "apicore.h"
#include "direct.h"

#define MAX_STEPS 100
#define MAX_NAME_LEN 200
#define MAX_MAX_STEPS 1000
#define DEFAULT_TIMEOUT "30 seconds"
#define DEFAULT_MAX_ATTEMPTS 3
#define DEFAULT_BACKOFF "1 second"
#define DEFAULT_MAX_BACKOFF "5 minutes"
#define APICORE_ACTOR "apicore"

/*
 * The longest timeout, backoff, max_backoff or deadline: far enough from
 * the end of timestamptz (294276 AD) that now() plus it, doubled, fits.
 * Counted as interval comparison counts (a year is 12 months of 30 days).
 */
#define MAX_SPAN_TEXT "100 years"
#define MAX_SPAN_USECS ((int64) 100 * MONTHS_PER_YEAR * DAYS_PER_MONTH * USECS_PER_DAY)

/* Settings */
static int	saga_retention_s = 7 * 24 * 3600;
static int	saga_maintenance_batch = 1000;
static bool saga_notify = true;

/* ---------- who listens: NOTIFY only when someone in the database does ---------- */

/*
 * PostgreSQL serialises the commits of notifying transactions (one lock per
 * database, held through commit), whether or not anyone listens.  So apicore
 * tracks, per backend, the database of a session that has run LISTEN
 * apicore_saga, and notifies only when one exists in MyDatabaseId.  A
 * LISTEN counts from the moment it runs (a rolled-back one costs a spare
 * NOTIFY, never a lost one); UNLISTEN and DISCARD ALL count once committed;
 * a backend that exits stops counting.  Without shared memory (apicore not
 * preloaded) every step notifies, as before.
 */
#define SAGA_CHANNEL "apicore_saga"

static Oid *saga_listeners = NULL;	/* [MaxBackends + 1], by ApicoreMyBackend */
static bool saga_unlisten_at_commit = false;
static ProcessUtility_hook_type prev_process_utility = NULL;

static void
SetListening(bool listening)
{
	if (saga_listeners && ApicoreMyBackend != ApicoreInvalidBackend && ApicoreMyBackend <= MaxBackends)
	{
		saga_listeners[ApicoreMyBackend] = listening ? MyDatabaseId : InvalidOid;
		pg_memory_barrier();
	}
}

static bool
AnyoneListens(void)
{
	if (saga_listeners == NULL)
		return true;
	pg_memory_barrier();
	for (int i = 1; i <= MaxBackends; i++)
		if (saga_listeners[i] == MyDatabaseId)
			return true;
	return false;
}

static void SagaListenXactCallback(XactEvent event, void *arg);
static void SagaListenerExit(int code, Datum arg);

/* The first LISTEN or UNLISTEN of this backend: start following them. */
static void
FollowListening(void)
{
	static bool following = false;

	if (following)
		return;
	RegisterXactCallback(SagaListenXactCallback, NULL);
	before_shmem_exit(SagaListenerExit, (Datum) 0);
	following = true;
}

static void
SagaListenXactCallback(XactEvent event, void *arg)
{
	if (event == XACT_EVENT_COMMIT && saga_unlisten_at_commit)
		SetListening(false);
	if (event == XACT_EVENT_COMMIT || event == XACT_EVENT_ABORT)
		saga_unlisten_at_commit = false;
}

static void
SagaListenerExit(int code, Datum arg)
{
	SetListening(false);
}

static void
SagaProcessUtility(PlannedStmt *pstmt, const char *queryString, bool readOnlyTree,
				   ProcessUtilityContext context, ParamListInfo params,
				   QueryEnvironment *queryEnv, DestReceiver *dest, QueryCompletion *qc)
{
	Node	   *stmt = pstmt->utilityStmt;

	if (IsA(stmt, ListenStmt) && strcmp(((ListenStmt *) stmt)->conditionname, SAGA_CHANNEL) == 0)
	{
		FollowListening();
		SetListening(true);
		saga_unlisten_at_commit = false;	/* UNLISTEN then LISTEN: listening */
	}
	else if ((IsA(stmt, UnlistenStmt) &&
			  (((UnlistenStmt *) stmt)->conditionname == NULL ||
			   strcmp(((UnlistenStmt *) stmt)->conditionname, SAGA_CHANNEL) == 0)) ||
			 (IsA(stmt, DiscardStmt) && ((DiscardStmt *) stmt)->target == DISCARD_ALL))
	{
		FollowListening();
		saga_unlisten_at_commit = true;
	}
	if (prev_process_utility)
		prev_process_utility(pstmt, queryString, readOnlyTree, context, params, queryEnv, dest, qc);
	else
		standard_ProcessUtility(pstmt, queryString, readOnlyTree, context, params, queryEnv, dest, qc);
}

void
SagaShmemRequest(void)
{
	RequestAddinShmemSpace(mul_size(MaxBackends + 1, sizeof(Oid)));
}

void
SagaShmemStartup(void)
{
	bool		found;

	saga_listeners = ShmemInitStruct("apicore saga listeners",
									 mul_size(MaxBackends + 1, sizeof(Oid)), &found);
	if (!found)
		memset(saga_listeners, 0, mul_size(MaxBackends + 1, sizeof(Oid)));
}

PG_FUNCTION_INFO_V1(apicore_saga_define);
PG_FUNCTION_INFO_V1(apicore_saga_start);
PG_FUNCTION_INFO_V1(apicore_saga_claim);
PG_FUNCTION_INFO_V1(apicore_saga_step_succeeded);
PG_FUNCTION_INFO_V1(apicore_saga_step_failed);
PG_FUNCTION_INFO_V1(apicore_saga_heartbeat);
PG_FUNCTION_INFO_V1(apicore_saga_cancel);
PG_FUNCTION_INFO_V1(apicore_saga_retry);
PG_FUNCTION_INFO_V1(apicore_saga_resolve);
PG_FUNCTION_INFO_V1(apicore_saga_get);
PG_FUNCTION_INFO_V1(apicore_saga_reclaim_leases);
PG_FUNCTION_INFO_V1(apicore_saga_fire_deadlines);
PG_FUNCTION_INFO_V1(apicore_saga_run_local_steps);
PG_FUNCTION_INFO_V1(apicore_saga_retention);
PG_FUNCTION_INFO_V1(apicore_saga_transition_append_only);

/* ---------- prepared plans ---------- */

typedef enum SagaPlanId
{
	PLAN_DEF_LOCK,
	PLAN_DEF_LATEST,
	PLAN_DEF_INSERT,
	PLAN_DEF_LATEST_010,
	PLAN_DEF_INSERT_010,
	PLAN_DEF_STEP_INSERT,
	PLAN_SAGA_INSERT,
	PLAN_SAGA_EXISTING,
	PLAN_SAGA_LOCK,
	PLAN_SAGA_SET_STATE,
	PLAN_SAGA_MOVE,
	PLAN_SAGA_CANCEL_REASON,
	PLAN_LOCAL_CALL,
	PLAN_LOG,
	PLAN_STEP_INSERT,
	PLAN_STEP_SUCCEED,
	PLAN_FAST_SUCCEED,
	PLAN_STEP_CLAIM_ONE,
	PLAN_STEP_CLAIMED,
	PLAN_STEP_EXPIRED,
	PLAN_STEP_LATEST,
	PLAN_STEP_CURRENT,
	PLAN_STEP_SET,
	PLAN_STEP_STOP,
	PLAN_STEP_REARM,
	PLAN_NEXT_COMPENSATION,
	PLAN_CLAIM,
	PLAN_CLAIM_MANY,
	PLAN_DUE_LOCAL_STEPS,
	PLAN_HEARTBEAT,
	PLAN_EXPIRED_SAGAS,
	PLAN_DEADLINE_SAGAS,
	PLAN_RETENTION_SAGAS,
	PLAN_RETENTION_LOG,
	PLAN_GET,
	NUM_PLANS
} SagaPlanId;

typedef struct SagaPlanDef
{
	const char *sql;
	int			nargs;
	Oid			argtypes[11];
	bool		custom;			/* plan for each call's values (a LIMIT parameter) */
	bool		v020;			/* uses columns added in 0.2.0 */
} SagaPlanDef;

/*
 * Every statement below runs as apicore's owner (SagaEnter) with search_path
 * = pg_catalog, pg_temp, and still names every operator, function and type
 * with its schema: nothing in it is resolved through a name the caller could
 * have created (a cross-type comparison such as regclass = oid has no exact
 * match in pg_catalog).  Qualified operators all have the same precedence,
 * so arithmetic next to a comparison is parenthesised.
 */
#define EQ " OPERATOR(pg_catalog.=) "
#define LT " OPERATOR(pg_catalog.<) "
#define LE " OPERATOR(pg_catalog.<=) "
#define GE " OPERATOR(pg_catalog.>=) "
#define PLUS " OPERATOR(pg_catalog.+) "
#define MINUS " OPERATOR(pg_catalog.-) "
#define CAT " OPERATOR(pg_catalog.||) "
#define SQL_NOW "pg_catalog.now()"

/*
 * A saga's outputs: the output of each forward step that succeeded, by step
 * name.  Derived from the step rows rather than kept in the saga row, so a
 * report does not rewrite every earlier output.
 */
#define OUTPUTS_SQL "(SELECT coalesce(pg_catalog.jsonb_object_agg(o.step, o.output), '{}'::pg_catalog.jsonb) " \
	"FROM apicore.saga_step o WHERE o.saga" EQ "g.id AND o.direction" EQ "'forward' AND o.state" EQ "'succeeded')"

/*
 * A claim is logged with the run's next transition (see saga_transition in
 * 40_saga.sql), not in a row of its own: it draws its log id now, so that
 * apicore.saga_log orders it where it happened.
 */
#define CLAIM_LOG_SQL "claim_id = pg_catalog.nextval('apicore.saga_transition_id_seq'::pg_catalog.regclass), " \
	"claimed_at = pg_catalog.clock_timestamp() "

/* the idempotency key of a step run: <saga_id>:<step>:<direction> */
#define IDEMPOTENCY_KEY_SQL(s) s ".saga::pg_catalog.text" CAT "':'" CAT s ".step" CAT "':'" CAT s ".direction"

/*
 * saga_claim's statements.  The runnable steps to hand out, oldest first,
 * skipping those another worker is claiming.  LIMIT 1, the common claim, is
 * a literal so that its plan can be generic (planned once); with a LIMIT
 * parameter the generic plan would assume 10% of the table and hash-join it.
 */
#define CLAIMABLE_SQL(limit, from) "SELECT saga, position, direction FROM apicore.saga_step " \
	" WHERE state" EQ "'runnable' AND run_after" GE from " AND run_after" LE SQL_NOW \
	"   AND ($2::pg_catalog.text[] IS NULL OR definition" EQ "ANY ($2)) AND function IS NULL " \
	" ORDER BY run_after LIMIT " limit " FOR UPDATE SKIP LOCKED"
#define CLAIM_SET_SQL "state = 'claimed', attempt = s.attempt" PLUS "1, worker = $1, " \
	"lease_expires_at = " SQL_NOW PLUS "s.timeout, updated_at = " SQL_NOW ", " CLAIM_LOG_SQL
/* saga_claim's result columns, then the claimed step's run_after */
#define CLAIM_RESULT_COLUMNS 11
#define CLAIM_RETURNING_SQL "s.saga, g.definition, g.version, s.step, s.direction, s.attempt, " \
	"g.payload, " OUTPUTS_SQL ", " IDEMPOTENCY_KEY_SQL("s") ", " \
	"s.lease_expires_at, s.action, s.run_after"

/*
 * One step: a single UPDATE whose key comes from an InitPlan, the fewest
 * plan nodes to start and run on the hot path.  The key is matched through
 * the primary key rather than the locked row's ctid: a version committed
 * after the statement's snapshot is found from the visible one (EvalPlanQual),
 * where a ctid lookup would miss it and report no work.
 */
#define CLAIM_ONE_SQL "UPDATE apicore.saga_step s SET " CLAIM_SET_SQL \
	"FROM apicore.saga g " \
	"WHERE (s.saga, s.position, s.direction)" EQ "(" CLAIMABLE_SQL("1", "$3") ") AND g.id" EQ "s.saga " \
	"RETURNING " CLAIM_RETURNING_SQL

/* Several steps: returned in the order they became runnable. */
#define CLAIM_MANY_SQL "WITH c AS (" CLAIMABLE_SQL("$3", "$4") "), " \
	"s AS (" \
	"  UPDATE apicore.saga_step s SET " CLAIM_SET_SQL \
	"    FROM c WHERE s.saga" EQ "c.saga AND s.position" EQ "c.position AND s.direction" EQ "c.direction " \
	"  RETURNING s.*) " \
	"SELECT " CLAIM_RETURNING_SQL " FROM s JOIN apicore.saga g ON g.id" EQ "s.saga ORDER BY s.run_after"

/* a finished state: retention counts from finished_at */
#define FINISHED_SQL(x) x EQ "ANY ('{completed,compensated,cancelled}'::pg_catalog.text[])"

static const SagaPlanDef plan_defs[NUM_PLANS] = {
	[PLAN_DEF_LOCK] = {"SELECT pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('apicore.saga_define'), "
	"pg_catalog.hashtext($1))", 1, {TEXTOID}},
	[PLAN_DEF_LATEST] = {"SELECT version, steps" EQ "$2, definer::pg_catalog.oid FROM apicore.saga_definition "
		"WHERE name" EQ "$1 ORDER BY version DESC LIMIT 1", 2, {TEXTOID, JSONBOID},
	.v020 = true},
	[PLAN_DEF_INSERT] = {"INSERT INTO apicore.saga_definition (name, version, steps, definer) "
	"VALUES ($1, $2, $3, $4)", 4, {TEXTOID, INT4OID, JSONBOID, REGROLEOID}, .v020 = true},
	/* the same, on 0.1.0's table (no definer) until ALTER EXTENSION UPDATE */
	[PLAN_DEF_LATEST_010] = {"SELECT version, steps" EQ "$2, 0::pg_catalog.oid FROM apicore.saga_definition "
	"WHERE name" EQ "$1 ORDER BY version DESC LIMIT 1", 2, {TEXTOID, JSONBOID}},
	[PLAN_DEF_INSERT_010] = {"INSERT INTO apicore.saga_definition (name, version, steps) "
	"VALUES ($1, $2, $3)", 3, {TEXTOID, INT4OID, JSONBOID}},
	[PLAN_DEF_STEP_INSERT] = {"INSERT INTO apicore.saga_definition_step VALUES "
		"($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)", 11,
		{TEXTOID, INT4OID, INT4OID, TEXTOID, TEXTOID, REGPROCEDUREOID, REGPROCEDUREOID,
	INTERVALOID, INT4OID, INTERVALOID, INTERVALOID}},
	[PLAN_SAGA_INSERT] = {"INSERT INTO apicore.saga (id, definition, version, payload, deadline) "
		"VALUES ($1, $2, $3, $4, " SQL_NOW PLUS "$5) ON CONFLICT (id) DO NOTHING RETURNING 1",
	5, {UUIDOID, TEXTOID, INT4OID, JSONBOID, INTERVALOID}},
	[PLAN_SAGA_EXISTING] = {"SELECT definition" EQ "$2 AND payload" EQ "$3 FROM apicore.saga WHERE id" EQ "$1",
	3, {UUIDOID, TEXTOID, JSONBOID}},
	[PLAN_SAGA_LOCK] = {"SELECT state, position, direction, cancel_reason IS NOT NULL "
	"FROM apicore.saga WHERE id" EQ "$1 FOR UPDATE", 1, {UUIDOID}},
	[PLAN_SAGA_SET_STATE] = {"UPDATE apicore.saga SET state = $2, updated_at = " SQL_NOW ", "
		"  finished_at = CASE WHEN " FINISHED_SQL("$2") " THEN " SQL_NOW " END "
	"WHERE id" EQ "$1", 2, {UUIDOID, TEXTOID}},
	[PLAN_SAGA_MOVE] = {"UPDATE apicore.saga SET position = $2, direction = $3, updated_at = " SQL_NOW " "
	"WHERE id" EQ "$1", 3, {UUIDOID, INT4OID, TEXTOID}},
	[PLAN_SAGA_CANCEL_REASON] = {"UPDATE apicore.saga SET cancel_reason = $2 WHERE id" EQ "$1",
	2, {UUIDOID, TEXTOID}},
	/*
	 * What a local step run calls, from the definition (never from the step
	 * row): the function of the step at $2 in direction $3 and the role that
	 * defined the saga, with the saga's payload and outputs.
	 */
	[PLAN_LOCAL_CALL] = {"SELECT g.payload, " OUTPUTS_SQL ", "
		"  (CASE WHEN $3" EQ "'forward' THEN d.function ELSE d.compensate_function END)::pg_catalog.oid, "
		"  def.definer::pg_catalog.oid "
		"FROM apicore.saga g "
		"JOIN apicore.saga_definition def ON def.name" EQ "g.definition AND def.version" EQ "g.version "
		"LEFT JOIN apicore.saga_definition_step d ON d.definition" EQ "g.definition "
		"  AND d.version" EQ "g.version AND d.position" EQ "$2 "
		"WHERE g.id" EQ "$1", 3, {UUIDOID, INT4OID, TEXTOID}, .v020 = true},
	/*
	 * A transition out of 'claimed' carries the run's claim; in the subquery
	 * the test of $5 is a one-time filter, so other transitions read no step.
	 */
	[PLAN_LOG] = {"INSERT INTO apicore.saga_transition "
		"(saga, step, direction, attempt, from_state, to_state, actor, reason, "
		" claim_id, claimed_at, claimed_by) "
		"SELECT $1, $2, $3, $4, $5, $6, $7, $8, c.claim_id, c.claimed_at, c.worker "
		"FROM (SELECT) one LEFT JOIN (SELECT claim_id, claimed_at, worker FROM apicore.saga_step "
		"  WHERE $5" EQ "'claimed' AND saga" EQ "$1 AND step" EQ "$2 AND direction" EQ "$3 "
		"    AND attempt" EQ "$4) c ON true",
	8, {UUIDOID, TEXTOID, TEXTOID, INT4OID, TEXTOID, TEXTOID, TEXTOID, TEXTOID}, .v020 = true},
	/*
	 * A step run becomes runnable: its settings are copied from the
	 * definition, the saga moves to it (recording the output of the step
	 * before, if any) and the transition is logged, in one statement.  No
	 * row when the definition has no step at $2.
	 */
	[PLAN_STEP_INSERT] = {"WITH n AS ("
		"  INSERT INTO apicore.saga_step (saga, position, direction, step, action, "
		"    definition, function, max_attempts, timeout, backoff, max_backoff) "
		"  SELECT g.id, d.position, $3, d.name, "
		"    CASE WHEN $3" EQ "'forward' THEN d.name "
		"      ELSE coalesce(d.compensate, d.compensate_function::pg_catalog.text) END, "
		"    d.definition, CASE WHEN $3" EQ "'forward' THEN d.function ELSE d.compensate_function END, "
		"    d.max_attempts, d.timeout, d.backoff, d.max_backoff "
		"  FROM apicore.saga g JOIN apicore.saga_definition_step d "
		"    ON d.definition" EQ "g.definition AND d.version" EQ "g.version AND d.position" EQ "$2 "
		"  WHERE g.id" EQ "$1 "
		"  RETURNING position, step, definition, function IS NOT NULL AS local), "
		"m AS ("
		"  UPDATE apicore.saga g SET position = coalesce((SELECT n.position FROM n), g.position), "
		"    direction = CASE WHEN EXISTS (SELECT FROM n) THEN $3 ELSE g.direction END, "
		"    updated_at = " SQL_NOW " "
		"  WHERE g.id" EQ "$1), "
		"l AS ("
		"  INSERT INTO apicore.saga_transition (saga, step, direction, to_state, actor) "
		"  SELECT $1, step, $3, 'runnable', $4 FROM n) "
		"SELECT step, definition, local FROM n",
	4, {UUIDOID, INT4OID, TEXTOID, TEXTOID}},
	/* compare-and-set: the claimed run at this attempt succeeded; logged */
	[PLAN_STEP_SUCCEED] = {"WITH s AS ("
		"  UPDATE apicore.saga_step SET state = 'succeeded', output = $4, lease_expires_at = NULL, "
		"    updated_at = " SQL_NOW " "
		"  WHERE saga" EQ "$1 AND position" EQ "$2 AND direction" EQ "$3 AND state" EQ "'claimed' "
		"    AND attempt" EQ "$6 "
		"  RETURNING step, direction, attempt, claim_id, claimed_at, worker) "
		"INSERT INTO apicore.saga_transition (saga, step, direction, attempt, from_state, to_state, actor, "
		"  claim_id, claimed_at, claimed_by) "
		"SELECT $1, step, direction, attempt, 'claimed', 'succeeded', $5, claim_id, claimed_at, worker FROM s",
	6, {UUIDOID, INT4OID, TEXTOID, JSONBOID, TEXTOID, INT4OID}, .v020 = true},
	/*
	 * The common report in one statement: a running saga's forward step
	 * succeeded and the next step is a worker's.  The saga row is locked by
	 * the UPDATE that moves it to the next step (one row version and one WAL
	 * record, not a lock and then an update), only if the next step exists
	 * and is not local.  Then the step is compare-and-set on (saga, step,
	 * attempt), the next one made runnable and three transitions (the run's
	 * claim, its success, the next run runnable) logged in one row.  No row:
	 * nothing changed, the general path applies.  A row whose third column
	 * is false: the step was not claimed at $3 (a stale or mistaken report),
	 * so the general path raises the report's error, which undoes the move.
	 */
	[PLAN_FAST_SUCCEED] = {"WITH g AS ("
		"  UPDATE apicore.saga g SET position = nd.position, updated_at = " SQL_NOW " "
		"  FROM apicore.saga_definition_step nd "
		"  WHERE g.id" EQ "$1 AND g.state" EQ "'running' AND g.cancel_reason IS NULL "
		"    AND g.direction" EQ "'forward' "
		"    AND nd.definition" EQ "g.definition AND nd.version" EQ "g.version "
		"    AND nd.position" EQ "(g.position" PLUS "1) AND nd.function IS NULL "
		"  RETURNING nd.position" MINUS "1 AS done, nd.position, nd.name, nd.definition, nd.max_attempts, "
		"    nd.timeout, nd.backoff, nd.max_backoff), "
		"s AS ("
		"  UPDATE apicore.saga_step st SET state = 'succeeded', output = $4, lease_expires_at = NULL, "
		"    updated_at = " SQL_NOW " "
		"  WHERE st.saga" EQ "$1 AND st.position" EQ "(SELECT done FROM g) AND st.direction" EQ "'forward' "
		"    AND st.step" EQ "$2 AND st.state" EQ "'claimed' AND st.attempt" EQ "$3 "
		"    AND st.worker IS NOT NULL "
		"  RETURNING st.step, st.worker, st.claim_id, st.claimed_at), "
		"n AS ("
		"  INSERT INTO apicore.saga_step (saga, position, direction, step, action, definition, "
		"    max_attempts, timeout, backoff, max_backoff) "
		"  SELECT $1, g.position, 'forward', g.name, g.name, g.definition, "
		"    g.max_attempts, g.timeout, g.backoff, g.max_backoff FROM g, s "
		"  RETURNING step), "
		"l AS ("
		"  INSERT INTO apicore.saga_transition (saga, step, direction, attempt, from_state, to_state, "
		"    actor, next_step, claim_id, claimed_at, claimed_by) "
		"  SELECT $1, s.step, 'forward', $3, 'claimed', 'succeeded', s.worker, n.step, "
		"    s.claim_id, s.claimed_at, s.worker FROM n, s) "
		"SELECT g.name, g.definition, EXISTS (SELECT FROM n) FROM g",
	4, {UUIDOID, TEXTOID, INT4OID, JSONBOID}, .v020 = true},
	[PLAN_STEP_CLAIM_ONE] = {"UPDATE apicore.saga_step SET state = 'claimed', attempt = attempt" PLUS "1, "
		"  worker = $4, lease_expires_at = " SQL_NOW PLUS "timeout, updated_at = " SQL_NOW ", " CLAIM_LOG_SQL
		"WHERE saga" EQ "$1 AND position" EQ "$2 AND direction" EQ "$3 AND state" EQ "'runnable' "
		"RETURNING step, attempt, max_attempts, backoff, max_backoff, function::pg_catalog.oid",
	4, {UUIDOID, INT4OID, TEXTOID, TEXTOID}, .v020 = true},
	/* a claimed run whose worker was erased (by hand) is reported as '(unknown)' */
	[PLAN_STEP_CLAIMED] = {"SELECT position, direction, step, attempt, max_attempts, backoff, max_backoff, "
		"  function::pg_catalog.oid, coalesce(worker, '(unknown)') "
		"FROM apicore.saga_step WHERE saga" EQ "$1 AND step" EQ "$2 AND state" EQ "'claimed'",
	2, {UUIDOID, TEXTOID}},
	[PLAN_STEP_EXPIRED] = {"SELECT position, direction, step, attempt, max_attempts, backoff, max_backoff, "
		"  function::pg_catalog.oid, coalesce(worker, '(unknown)') "
		"FROM apicore.saga_step WHERE saga" EQ "$1 AND lease_expires_at" LT SQL_NOW,
	1, {UUIDOID}},
	[PLAN_STEP_LATEST] = {"SELECT state, attempt FROM apicore.saga_step WHERE saga" EQ "$1 AND step" EQ "$2 "
	"ORDER BY updated_at DESC, direction DESC LIMIT 1", 2, {UUIDOID, TEXTOID}},
	[PLAN_STEP_CURRENT] = {"SELECT s.state, s.step, s.attempt, coalesce(s.worker, '(unknown)'), "
		"  s.lease_expires_at::pg_catalog.text "
		"FROM apicore.saga_step s WHERE s.saga" EQ "$1 AND s.position" EQ "$2 AND s.direction" EQ "$3",
	3, {UUIDOID, INT4OID, TEXTOID}},
	[PLAN_STEP_SET] = {"UPDATE apicore.saga_step SET state = $4, output = $5, last_error = $6, "
		"  run_after = coalesce($7, run_after), lease_expires_at = NULL, updated_at = " SQL_NOW " "
		"WHERE saga" EQ "$1 AND position" EQ "$2 AND direction" EQ "$3",
	7, {UUIDOID, INT4OID, TEXTOID, TEXTOID, JSONBOID, TEXTOID, TIMESTAMPTZOID}},
	/* cancel (runnable only) or resolve (claimed too) stops the active run */
	[PLAN_STEP_STOP] = {"UPDATE apicore.saga_step SET state = 'cancelled', lease_expires_at = NULL, "
		"  updated_at = " SQL_NOW " "
		"WHERE saga" EQ "$1 AND (state" EQ "'runnable' OR ($2 AND state" EQ "'claimed')) "
		"RETURNING position, direction, step, attempt",
	2, {UUIDOID, BOOLOID}},
	/* operator retry: runnable now, with a fresh budget of attempts if it had given up */
	[PLAN_STEP_REARM] = {"UPDATE apicore.saga_step s SET state = 'runnable', run_after = " SQL_NOW ", "
		"  updated_at = " SQL_NOW ", max_attempts = CASE WHEN s.state" EQ "'runnable' THEN s.max_attempts "
		"    ELSE s.attempt" PLUS "d.max_attempts END "
		"FROM apicore.saga g, apicore.saga_definition_step d "
		"WHERE s.saga" EQ "$1 AND s.position" EQ "$2 AND s.direction" EQ "$3 AND g.id" EQ "s.saga "
		"  AND d.definition" EQ "g.definition AND d.version" EQ "g.version AND d.position" EQ "s.position "
		"RETURNING s.step, s.definition, s.function IS NOT NULL",
	3, {UUIDOID, INT4OID, TEXTOID}},
	/* the next step to compensate: the highest succeeded one below $2 that has a compensation */
	[PLAN_NEXT_COMPENSATION] = {"SELECT s.position FROM apicore.saga_step s "
		"JOIN apicore.saga g ON g.id" EQ "s.saga "
		"JOIN apicore.saga_definition_step d "
		"  ON d.definition" EQ "g.definition AND d.version" EQ "g.version AND d.position" EQ "s.position "
		"WHERE s.saga" EQ "$1 AND s.direction" EQ "'forward' AND s.state" EQ "'succeeded' "
		"  AND s.position" LT "$2 "
		"  AND (d.compensate IS NOT NULL OR d.compensate_function IS NOT NULL) "
		"ORDER BY s.position DESC LIMIT 1", 2, {UUIDOID, INT4OID}},
	[PLAN_CLAIM] = {CLAIM_ONE_SQL, 3, {TEXTOID, TEXTARRAYOID, TIMESTAMPTZOID}, .v020 = true},
	[PLAN_CLAIM_MANY] = {CLAIM_MANY_SQL, 4, {TEXTOID, TEXTARRAYOID, INT4OID, TIMESTAMPTZOID},
	.custom = true, .v020 = true},
	[PLAN_DUE_LOCAL_STEPS] = {"SELECT g.id, s.position, s.direction FROM apicore.saga_step s "
		"JOIN apicore.saga g ON g.id" EQ "s.saga "
		"WHERE s.state" EQ "'runnable' AND s.run_after" LE SQL_NOW " AND s.function IS NOT NULL "
		"ORDER BY s.run_after LIMIT $1 FOR UPDATE OF g SKIP LOCKED", 1, {INT4OID}, true},
	[PLAN_HEARTBEAT] = {"UPDATE apicore.saga_step SET lease_expires_at = " SQL_NOW PLUS "timeout, "
		"  updated_at = " SQL_NOW " "
		"WHERE saga" EQ "$1 AND step" EQ "$2 AND state" EQ "'claimed' AND attempt" EQ "$3 "
		"RETURNING lease_expires_at",
	3, {UUIDOID, TEXTOID, INT4OID}},
	[PLAN_EXPIRED_SAGAS] = {"SELECT g.id FROM apicore.saga_step s JOIN apicore.saga g ON g.id" EQ "s.saga "
		"WHERE s.lease_expires_at" LT SQL_NOW " "
		"ORDER BY s.lease_expires_at LIMIT $1 FOR UPDATE OF g SKIP LOCKED",
	1, {INT4OID}, true},
	[PLAN_DEADLINE_SAGAS] = {"SELECT id FROM apicore.saga "
		"WHERE state" EQ "'running' AND deadline IS NOT NULL AND deadline" LT SQL_NOW " "
	"ORDER BY deadline LIMIT $1 FOR UPDATE SKIP LOCKED", 1, {INT4OID}, true},
	/* a finished saga goes with its steps in one statement */
	[PLAN_RETENTION_SAGAS] = {"WITH doomed AS ("
		"  SELECT id FROM apicore.saga "
		"   WHERE finished_at" LT "(" SQL_NOW MINUS "pg_catalog.make_interval(secs => $1::pg_catalog.float8)) "
		"   ORDER BY finished_at LIMIT $2 FOR UPDATE SKIP LOCKED), "
		"gone AS (DELETE FROM apicore.saga g USING doomed WHERE g.id" EQ "doomed.id RETURNING g.id), "
		"steps AS (DELETE FROM apicore.saga_step s USING gone WHERE s.saga" EQ "gone.id) "
		"SELECT pg_catalog.count(*)::pg_catalog.int4, pg_catalog.array_agg(id) FROM gone",
	2, {INT4OID, INT4OID}, true},
	[PLAN_RETENTION_LOG] = {"DELETE FROM apicore.saga_transition WHERE saga" EQ "ANY ($1)",
	1, {UUIDARRAYOID}},
	[PLAN_GET] = {"SELECT pg_catalog.jsonb_build_object("
		"  'saga_id', g.id, 'definition', g.definition, 'version', g.version, 'state', g.state, "
		"  'payload', g.payload, 'outputs', " OUTPUTS_SQL ", 'deadline', g.deadline, "
		"  'cancel_reason', g.cancel_reason, 'created_at', g.created_at, 'updated_at', g.updated_at, "
		"  'current_step', (SELECT c.step FROM apicore.saga_step c WHERE c.saga" EQ "g.id "
		"                    AND c.position" EQ "g.position AND c.direction" EQ "g.direction), "
		"  'direction', g.direction, "
		"  'steps', coalesce((SELECT pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object("
		"      'step', s.step, 'position', s.position, 'direction', s.direction, 'action', s.action, "
		"      'local', s.function IS NOT NULL, 'state', s.state, 'attempt', s.attempt, "
		"      'max_attempts', s.max_attempts, 'run_after', s.run_after, "
		"      'lease_expires_at', s.lease_expires_at, 'worker', s.worker, 'last_error', s.last_error, "
		"      'output', s.output, 'idempotency_key', " IDEMPOTENCY_KEY_SQL("s") ") "
		"    ORDER BY s.direction DESC, CASE WHEN s.direction" EQ "'forward' THEN s.position "
		"      ELSE OPERATOR(pg_catalog.-) s.position END) "
		"    FROM apicore.saga_step s WHERE s.saga" EQ "g.id), '[]'::pg_catalog.jsonb)) "
		"FROM apicore.saga g WHERE g.id" EQ "$1", 1, {UUIDOID}},
};

static SPIPlanPtr plans[NUM_PLANS];

/*
 * After a new apicore.so is installed and the server restarted, the tables
 * stay as the old version made them until ALTER EXTENSION apicore UPDATE:
 * statements that need the 0.2.0 columns (claims logged with the next
 * transition, the definer of a definition) refuse clearly until then
 * (checked when such a statement is first prepared in a backend).
 */
static void
RequireCurrentTables(void)
{
	Oid			nsp = get_namespace_oid("apicore", false);
	Oid			log = get_relname_relid("saga_transition", nsp);
	Oid			def = get_relname_relid("saga_definition", nsp);

	if (!OidIsValid(log) || get_attnum(log, "claim_id") == InvalidAttrNumber ||
		!OidIsValid(def) || get_attnum(def, "definer") == InvalidAttrNumber)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("apicore: the saga tables are older than the installed apicore library %s",
						APICORE_VERSION),
				 errhint("Run ALTER EXTENSION apicore UPDATE in this database.")));
}

/* Run a plan (prepared on first use, kept for the backend's life). */
static int
SagaExec(SagaPlanId id, Datum *values, const char *nulls, bool read_only, long count)
{
	int			rc;

	if (plans[id] == NULL)
	{
		SPIPlanPtr	plan;

		if (plan_defs[id].v020)
			RequireCurrentTables();

		/*
		 * The generic plan unless told otherwise: a custom plan is planned
		 * again on every call, which costs more than these statements take
		 * to run.
		 */
		plan = SPI_prepare_cursor(plan_defs[id].sql, plan_defs[id].nargs,
								  (Oid *) plan_defs[id].argtypes,
								  plan_defs[id].custom ? 0 : CURSOR_OPT_GENERIC_PLAN);

		if (plan == NULL)
			elog(ERROR, "apicore: could not prepare saga plan %d: %s",
				 (int) id, SPI_result_code_string(SPI_result));
		SPI_keepplan(plan);
		plans[id] = plan;
	}
	rc = SPI_execute_plan(plans[id], values, nulls, read_only, count);
	if (rc < 0)
		elog(ERROR, "apicore: saga plan %d failed: %s", (int) id, SPI_result_code_string(rc));
	return rc;
}

/* Column `col` (1-based) of result row `row`; isnull optional. */
static Datum
ResultValue(int row, int col, bool *isnull)
{
	bool		dummy;

	return SPI_getbinval(SPI_tuptable->vals[row], SPI_tuptable->tupdesc, col,
						 isnull ? isnull : &dummy);
}

static char *
ResultText(int row, int col)
{
	return SPI_getvalue(SPI_tuptable->vals[row], SPI_tuptable->tupdesc, col);
}

/*
 * Column `col` of a step row read back, which apicore never leaves NULL: a
 * NULL (a NOT NULL constraint dropped and the row changed by hand) is a
 * clean error, not a NULL pointer followed.
 */
static Datum
StepValue(int row, int col)
{
	bool		isnull;
	Datum		value = ResultValue(row, col, &isnull);

	if (isnull)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg("apicore: column %s of a saga step is NULL, which apicore never writes",
						SPI_fname(SPI_tuptable->tupdesc, col)),
				 errhint("The row was changed outside apicore; end the saga with apicore.saga_resolve.")));
	return value;
}

static char *
StepText(int row, int col)
{
	(void) StepValue(row, col);
	return ResultText(row, col);
}

/* ---------- argument checks ---------- */

static void
RequireArg(FunctionCallInfo fcinfo, int argno, const char *name, const char *hint)
{
	ApicoreRequireArg(fcinfo, argno, "apicore: ", name, hint);
}

/* A required text argument of 1..MAX_NAME_LEN characters. */
static char *
NameArg(FunctionCallInfo fcinfo, int argno, const char *name, const char *hint)
{
	char	   *value;
	int			len;

	RequireArg(fcinfo, argno, name, hint);
	value = text_to_cstring(PG_GETARG_TEXT_PP(argno));
	len = pg_mbstrlen(value);
	if (len < 1 || len > MAX_NAME_LEN)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("apicore: %s must be 1 to %d characters, got %d", name, MAX_NAME_LEN, len),
				 errhint("%s", hint)));
	return value;
}

/* The caller's role name: the actor logged for what it asks. */
static char *
ActorName(Oid caller)
{
	return GetUserNameFromId(caller, false);
}

/* ---------- identity: every entry point works as apicore's owner ---------- */

/*
 * apicore's saga tables are written only through these functions: no role
 * but apicore's owner holds a privilege to write them.  So every entry point
 * does its work as the owner, through ApicoreBecome (restricted operation,
 * search_path = pg_catalog, pg_temp), and the statements it runs qualify
 * every name.  Who may call what is decided by EXECUTE on the functions.
 * Returns the caller, who is only ever the actor named in the log and the
 * definer of a new definition.
 */
static Oid
SagaEnter(ApicoreIdentity *id)
{
	Oid			caller = GetUserId();

	ApicoreBecome(id, ApicoreOwner(), 0);
	return caller;
}

/* ---------- intervals: bounded at definition, checked again at use ---------- */

/* An interval in microseconds (a month is 30 days); false on overflow. */
static bool
SpanMicroseconds(const Interval *span, int64 *usecs)
{
	int64		days;

	if (pg_mul_s64_overflow((int64) span->month, DAYS_PER_MONTH, &days) ||
		pg_add_s64_overflow(days, span->day, &days) ||
		pg_mul_s64_overflow(days, USECS_PER_DAY, usecs) ||
		pg_add_s64_overflow(*usecs, span->time, usecs))
		return false;
	return true;
}

/* Positive and at most MAX_SPAN_TEXT, with no negative field. */
static bool
SpanUsable(const Interval *span)
{
	int64		usecs;

	return span->month >= 0 && span->day >= 0 && span->time >= 0 &&
		SpanMicroseconds(span, &usecs) && usecs > 0 && usecs <= MAX_SPAN_USECS;
}

/* ---------- the audit log ---------- */

static void
LogTransition(pg_uuid_t *saga, const char *step, const char *direction, int attempt,
			  const char *from, const char *to, const char *actor, const char *reason)
{
	Datum		values[8];
	char		nulls[8] = "        ";

	values[0] = UUIDPGetDatum(saga);
	values[1] = step ? CStringGetTextDatum(step) : (Datum) 0;
	nulls[1] = step ? ' ' : 'n';
	values[2] = direction ? CStringGetTextDatum(direction) : (Datum) 0;
	nulls[2] = direction ? ' ' : 'n';
	values[3] = Int32GetDatum(attempt);
	nulls[3] = attempt > 0 ? ' ' : 'n';
	values[4] = from ? CStringGetTextDatum(from) : (Datum) 0;
	nulls[4] = from ? ' ' : 'n';
	values[5] = CStringGetTextDatum(to);
	values[6] = CStringGetTextDatum(actor);
	values[7] = reason ? CStringGetTextDatum(reason) : (Datum) 0;
	nulls[7] = reason ? ' ' : 'n';
	SagaExec(PLAN_LOG, values, nulls, false, 0);
}

/* ---------- the saga row ---------- */

typedef struct SagaRow
{
	pg_uuid_t	id;
	char	   *state;
	int			position;
	char	   *direction;
	bool		cancelling;		/* saga_cancel or a deadline asked to stop */
} SagaRow;

/* One run of a step that has just been claimed (by a worker or by apicore). */
typedef struct StepRun
{
	int			position;
	char	   *direction;
	char	   *step;
	int			attempt;
	int			max_attempts;
	Interval   *backoff;
	Interval   *max_backoff;
	char	   *worker;
} StepRun;

static void SagaAdvanceFrom(SagaRow *saga, StepRun *run, bool succeeded, const char *actor);
static void SagaStepFailed(SagaRow *saga, StepRun *run, const char *error, bool retryable,
						   const char *actor);

static char *
SagaIdText(pg_uuid_t *id)
{
	return DatumGetCString(DirectFunctionCall1(uuid_out, UUIDPGetDatum(id)));
}

static bool
IsOneOf(const char *value, const char *const *known, int n)
{
	for (int i = 0; i < n && value != NULL; i++)
		if (strcmp(value, known[i]) == 0)
			return true;
	return false;
}

static bool
IsDirection(const char *direction)
{
	static const char *const directions[] = {"forward", "compensate"};

	return IsOneOf(direction, directions, lengthof(directions));
}

/*
 * A saga row that apicore could not have written (changed by hand): a clean
 * error instead of a state machine run on values it never expects.
 */
static void
CheckSagaRow(SagaRow *saga)
{
	static const char *const states[] = {"running", "compensating", "completed", "compensated",
	"failed", "cancelled"};

	if (IsOneOf(saga->state, states, lengthof(states)) && saga->position >= 1 &&
		IsDirection(saga->direction))
		return;
	ereport(ERROR,
			(errcode(ERRCODE_DATA_CORRUPTED),
			 errmsg("apicore: saga %s has state %s, position %d and direction %s, which apicore never writes",
					SagaIdText(&saga->id), saga->state ? quote_literal_cstr(saga->state) : "NULL",
					saga->position, saga->direction ? quote_literal_cstr(saga->direction) : "NULL"),
			 errhint("The row was changed outside apicore; end the saga with apicore.saga_resolve.")));
}

/*
 * Lock the saga row; NULL when there is no such saga.  `check`: refuse a
 * row apicore never writes (saga_resolve, which can end such a saga, does
 * not check).
 */
static SagaRow *
LockSagaRow(pg_uuid_t *id, bool check)
{
	Datum		values[1] = {UUIDPGetDatum(id)};
	SagaRow    *saga;
	bool		isnull;

	SagaExec(PLAN_SAGA_LOCK, values, NULL, false, 1);
	if (SPI_processed == 0)
		return NULL;
	saga = palloc0(sizeof(SagaRow));
	saga->id = *id;
	saga->state = ResultText(0, 1);
	saga->position = DatumGetInt32(ResultValue(0, 2, &isnull));
	if (isnull)
		saga->position = 0;
	saga->direction = ResultText(0, 3);
	saga->cancelling = DatumGetBool(ResultValue(0, 4, NULL));
	if (check)
		CheckSagaRow(saga);
	if (saga->state == NULL)
		saga->state = "NULL";
	if (saga->direction == NULL)
		saga->direction = "NULL";
	return saga;
}

static SagaRow *
LockSaga(pg_uuid_t *id)
{
	return LockSagaRow(id, true);
}

static SagaRow *
LockSagaOrErrorRow(pg_uuid_t *id, bool check)
{
	SagaRow    *saga = LockSagaRow(id, check);

	if (saga == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("apicore: saga_id %s does not exist", SagaIdText(id)),
				 errhint("Pass the id returned by apicore.saga_start; finished sagas are removed after apicore.saga_retention.")));
	return saga;
}

static SagaRow *
LockSagaOrError(pg_uuid_t *id)
{
	return LockSagaOrErrorRow(id, true);
}

/*
 * Compare-and-set the claimed run to succeeded, with its output.  False when
 * the run is no longer claimed at that attempt.
 */
static bool
RecordSuccess(SagaRow *saga, StepRun *run, Datum output, bool output_null, const char *actor)
{
	Datum		values[6] = {UUIDPGetDatum(&saga->id), Int32GetDatum(run->position),
		CStringGetTextDatum(run->direction), output, CStringGetTextDatum(actor),
	Int32GetDatum(run->attempt)};
	char		nulls[6] = {' ', ' ', ' ', output_null ? 'n' : ' ', ' ', ' '};

	SagaExec(PLAN_STEP_SUCCEED, values, nulls, false, 0);
	return SPI_processed > 0;
}

static void
SetSagaState(SagaRow *saga, const char *state, const char *actor, const char *reason)
{
	Datum		values[2] = {UUIDPGetDatum(&saga->id), CStringGetTextDatum(state)};

	if (strcmp(saga->state, state) == 0)
		return;
	SagaExec(PLAN_SAGA_SET_STATE, values, NULL, false, 0);
	LogTransition(&saga->id, NULL, NULL, 0, saga->state, state, actor, reason);
	saga->state = pstrdup(state);
}

static bool
SagaIsFinished(SagaRow *saga)
{
	return strcmp(saga->state, "completed") == 0 ||
		strcmp(saga->state, "compensated") == 0 ||
		strcmp(saga->state, "cancelled") == 0;
}

/* ---------- local steps ---------- */

/*
 * What is wrong with calling `fn` as a local step run by `definer`, or NULL
 * when nothing is: it exists, is a plain function of (jsonb) or (jsonb,
 * jsonb) returning one jsonb, the definer still exists and may execute it,
 * and a superuser definer runs only a superuser's function (so that no other
 * role can put code there that then runs as superuser).  Checked when a
 * saga is defined and again before every call.  *nargs: the function's.
 */
static char *
LocalFunctionProblem(Oid fn, Oid definer, int *nargs, int *sqlstate)
{
	HeapTuple	tuple;
	Form_pg_proc proc;
	char	   *problem = NULL;

	*sqlstate = ERRCODE_INVALID_PARAMETER_VALUE;
	if (!SearchSysCacheExists1(AUTHOID, ObjectIdGetDatum(definer)))
	{
		*sqlstate = ERRCODE_UNDEFINED_OBJECT;
		return psprintf("the role (OID %u) that defined the saga no longer exists", definer);
	}
	tuple = SearchSysCache1(PROCOID, ObjectIdGetDatum(fn));
	if (!HeapTupleIsValid(tuple))
	{
		*sqlstate = ERRCODE_UNDEFINED_FUNCTION;
		return psprintf("function %u no longer exists", fn);
	}
	proc = (Form_pg_proc) GETSTRUCT(tuple);
	*nargs = proc->pronargs;
	if (proc->prokind != PROKIND_FUNCTION || proc->proretset || proc->prorettype != JSONBOID ||
		proc->pronargs < 1 || proc->pronargs > 2 || proc->proargtypes.values[0] != JSONBOID ||
		(proc->pronargs == 2 && proc->proargtypes.values[1] != JSONBOID))
		problem = psprintf("%s is not a function of (jsonb) or (jsonb, jsonb) returning one jsonb value",
						   format_procedure(fn));
	else if (ApicoreProcAclcheck(fn, definer, ACL_EXECUTE) != ACLCHECK_OK)
	{
		*sqlstate = ERRCODE_INSUFFICIENT_PRIVILEGE;
		problem = psprintf("role %s, which defined the saga, may not execute %s",
						   GetUserNameFromId(definer, false), format_procedure(fn));
	}
	else if (superuser_arg(definer) && !superuser_arg(proc->proowner))
	{
		*sqlstate = ERRCODE_INSUFFICIENT_PRIVILEGE;
		problem = psprintf("%s belongs to role %s, who is not a superuser, and would run as a superuser",
						   format_procedure(fn), GetUserNameFromId(proc->proowner, false));
	}
	ReleaseSysCache(tuple);
	return problem;
}

/* A local step's function call, as the body of a subtransaction. */
typedef struct LocalCall
{
	Oid			function;
	Oid			definer;
	int			nargs;			/* 1 or 2, checked */
	Datum		payload;
	Datum		outputs;
	MemoryContext result_cxt;
	Datum		output;
	bool		output_null;
} LocalCall;

/*
 * Call the function as the role that defined the saga.  On error the
 * subtransaction's abort restores the identity.
 */
static void
CallLocalBody(void *arg)
{
	LocalCall  *lc = arg;
	LOCAL_FCINFO(call, 2);
	FmgrInfo	flinfo;
	ApicoreIdentity definer;
	Datum		result;

	ApicoreBecome(&definer, lc->definer, 0);
	fmgr_info(lc->function, &flinfo);
	if (flinfo.fn_nargs != lc->nargs)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("apicore: %s changed while the step was called", format_procedure(lc->function))));
	InitFunctionCallInfoData(*call, &flinfo, lc->nargs, InvalidOid, NULL, NULL);
	call->args[0].value = lc->payload;
	call->args[0].isnull = false;
	call->args[1].value = lc->outputs;
	call->args[1].isnull = false;
	result = FunctionCallInvoke(call);
	ApicoreRestore(&definer);
	lc->output_null = call->isnull;
	if (!call->isnull)
	{
		MemoryContext old = MemoryContextSwitchTo(lc->result_cxt);

		lc->output = PointerGetDatum(PG_DETOAST_DATUM_COPY(result));
		MemoryContextSwitchTo(old);
	}
}

/*
 * Call a local step's function (payload[, outputs]) -> jsonb in a
 * subtransaction: on error its writes are undone and the error message is
 * returned, so the failure can be recorded in the enclosing transaction.
 * Query cancel is not a step failure: it is rethrown.
 */
static char *
CallLocalFunction(LocalCall *call)
{
	ErrorData  *failure;

	call->result_cxt = CurrentMemoryContext;
	call->output_null = true;
	failure = ApicoreTrySubtransaction(CallLocalBody, call);
	if (failure == NULL)
		return NULL;
	return psprintf("%s (SQLSTATE %s)", failure->message, unpack_sql_state(failure->sqlerrcode));
}

/*
 * Run a claimed local step now and record its outcome.  The function and
 * the role it runs as come from the definition; one that can no longer be
 * called fails the step for good (it would fail every attempt).
 */
static void
RunLocalStep(SagaRow *saga, StepRun *run)
{
	Datum		values[3] = {UUIDPGetDatum(&saga->id), Int32GetDatum(run->position),
	CStringGetTextDatum(run->direction)};
	LocalCall	call = {0};
	bool		isnull;
	int			sqlstate;
	char	   *error;

	SagaExec(PLAN_LOCAL_CALL, values, NULL, false, 1);
	if (SPI_processed == 0)
		error = pstrdup("the saga's definition is missing");
	else
	{
		call.payload = ResultValue(0, 1, NULL);
		call.outputs = ResultValue(0, 2, NULL);
		call.function = DatumGetObjectId(ResultValue(0, 3, &isnull));
		if (isnull)
			call.function = InvalidOid;
		call.definer = DatumGetObjectId(ResultValue(0, 4, NULL));
		error = LocalFunctionProblem(call.function, call.definer, &call.nargs, &sqlstate);
	}
	if (error != NULL)
	{
		SagaStepFailed(saga, run, psprintf("apicore: step \"%s\" cannot run: %s (SQLSTATE %s)",
										   run->step, error, unpack_sql_state(sqlstate)),
					   false, APICORE_ACTOR);
		return;
	}
	error = CallLocalFunction(&call);
	if (error == NULL)
	{
		if (RecordSuccess(saga, run, call.output, call.output_null, APICORE_ACTOR))
			SagaAdvanceFrom(saga, run, true, APICORE_ACTOR);
		return;
	}
	/* failure: retried with backoff or given up, as for a worker's report */
	SagaStepFailed(saga, run, error, true, APICORE_ACTOR);
}

/* Claim the runnable local step at (position, direction) and run it. */
static void
ClaimAndRunLocal(SagaRow *saga, int position, const char *direction)
{
	Datum		values[4] = {UUIDPGetDatum(&saga->id), Int32GetDatum(position),
	CStringGetTextDatum(direction), CStringGetTextDatum(APICORE_ACTOR)};
	StepRun		run;

	if (!IsDirection(direction))
		ereport(ERROR,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg("apicore: a step of saga %s has direction %s, which apicore never writes",
						SagaIdText(&saga->id), quote_literal_cstr(direction)),
				 errhint("The row was changed outside apicore; end the saga with apicore.saga_resolve.")));
	SagaExec(PLAN_STEP_CLAIM_ONE, values, NULL, false, 1);
	if (SPI_processed == 0)
		return;
	run.position = position;
	run.direction = pstrdup(direction);
	run.step = StepText(0, 1);
	run.attempt = DatumGetInt32(StepValue(0, 2));
	run.max_attempts = DatumGetInt32(StepValue(0, 3));
	run.backoff = DatumGetIntervalP(StepValue(0, 4));
	run.max_backoff = DatumGetIntervalP(StepValue(0, 5));
	run.worker = APICORE_ACTOR;
	RunLocalStep(saga, &run);
}

/* ---------- transitions ---------- */

static void
NotifyRunnable(SagaRow *saga, const char *definition, const char *step)
{
	char	   *id;
	StringInfoData payload;

	/* see AnyoneListens; apicore.saga_notify = off skips even the check */
	if (!saga_notify || !AnyoneListens())
		return;
	id = DatumGetCString(DirectFunctionCall1(uuid_out, UUIDPGetDatum(&saga->id)));
	initStringInfo(&payload);
	appendStringInfo(&payload, "{\"saga_id\": \"%s\", \"definition\": ", id);
	escape_json(&payload, definition);
	appendStringInfoString(&payload, ", \"step\": ");
	escape_json(&payload, step);
	appendStringInfoChar(&payload, '}');
	Async_Notify("apicore_saga", payload.data);
}

/*
 * The step run at (position, direction) becomes runnable, or is made
 * runnable again (`rearm`, operator retry).  A local step runs at once, in
 * this transaction; for others, workers are woken by NOTIFY.
 */
static bool
Schedule(SagaRow *saga, int position, const char *direction, const char *actor, bool rearm)
{
	Datum		values[4] = {UUIDPGetDatum(&saga->id), Int32GetDatum(position),
	CStringGetTextDatum(direction), CStringGetTextDatum(actor)};
	char	   *step;
	char	   *definition;
	bool		local;

	SagaExec(rearm ? PLAN_STEP_REARM : PLAN_STEP_INSERT, values, NULL, false, 1);
	if (SPI_processed == 0)
		return false;			/* the definition has no step at `position` */
	step = ResultText(0, 1);
	definition = ResultText(0, 2);
	local = DatumGetBool(ResultValue(0, 3, NULL));
	if (rearm)
	{
		SagaExec(PLAN_SAGA_MOVE, values, NULL, false, 0);
		LogTransition(&saga->id, step, direction, 0, NULL, "runnable", actor, NULL);
	}
	saga->position = position;
	saga->direction = pstrdup(direction);
	if (local)
		ClaimAndRunLocal(saga, position, direction);
	else
		NotifyRunnable(saga, definition, step);
	return true;
}

static bool
MakeRunnable(SagaRow *saga, int position, const char *direction, const char *actor)
{
	return Schedule(saga, position, direction, actor, false);
}

/*
 * Compensate, in reverse order, every succeeded step below `below`; when
 * none is left the saga ends compensated (or cancelled, when asked to stop).
 */
static void
CompensateBelow(SagaRow *saga, int below, const char *actor)
{
	Datum		values[2] = {UUIDPGetDatum(&saga->id), Int32GetDatum(below)};

	SetSagaState(saga, "compensating", actor, NULL);
	SagaExec(PLAN_NEXT_COMPENSATION, values, NULL, false, 1);
	if (SPI_processed > 0)
		MakeRunnable(saga, DatumGetInt32(ResultValue(0, 1, NULL)), "compensate", actor);
	else
		SetSagaState(saga, saga->cancelling ? "cancelled" : "compensated", actor, NULL);
}

/* After a step run's final outcome: run the next step, compensate, or finish. */
static void
SagaAdvanceFrom(SagaRow *saga, StepRun *run, bool succeeded, const char *actor)
{
	bool		forward = strcmp(run->direction, "forward") == 0;

	if (forward && succeeded && !saga->cancelling)
	{
		if (!MakeRunnable(saga, run->position + 1, "forward", actor))
			SetSagaState(saga, "completed", actor, NULL);
	}
	else if (forward)
		CompensateBelow(saga, succeeded ? run->position + 1 : run->position, actor);
	else if (succeeded)
		CompensateBelow(saga, run->position, actor);
	else
		SetSagaState(saga, "failed", actor, "a compensation exhausted its attempts");
}

/*
 * Exponential backoff with jitter: backoff * 2^(attempt-1), capped at
 * max_backoff, of which a random half is waited ("equal jitter"), so that
 * workers that failed together do not retry together.
 */
static TimestampTz
RetryAt(StepRun *run)
{
	int64		base;
	int64		cap;
	int64		delay;
	int64		half_ms;
	TimestampTz at;

	/* saga_define bounds both; a row changed by hand must not overflow */
	if (!SpanUsable(run->backoff) || !SpanUsable(run->max_backoff))
		ereport(ERROR,
				(errcode(ERRCODE_DATETIME_VALUE_OUT_OF_RANGE),
				 errmsg("apicore: backoff %s or max_backoff %s of step \"%s\" is not a positive interval of at most %s",
						DatumGetCString(DirectFunctionCall1(interval_out, IntervalPGetDatum(run->backoff))),
						DatumGetCString(DirectFunctionCall1(interval_out, IntervalPGetDatum(run->max_backoff))),
						run->step, MAX_SPAN_TEXT),
				 errhint("The step row was changed outside apicore; end the saga with apicore.saga_resolve.")));
	(void) SpanMicroseconds(run->backoff, &base);
	(void) SpanMicroseconds(run->max_backoff, &cap);
	delay = base;
	for (int i = 1; i < run->attempt && delay < cap; i++)
		delay *= 2;				/* below cap before doubling: no overflow */
	delay = Min(delay, cap);
	half_ms = Min(delay / 2000, (int64) PG_UINT32_MAX - 1);
	delay = delay / 2 + (int64) randombytes_uniform((uint32) half_ms + 1) * 1000;
	at = GetCurrentTransactionStartTimestamp() + delay;
	if (!IS_VALID_TIMESTAMP(at))
		ereport(ERROR,
				(errcode(ERRCODE_DATETIME_VALUE_OUT_OF_RANGE),
				 errmsg("apicore: the retry time of step \"%s\" is out of range", run->step)));
	return at;
}

/* Record a failed attempt: retry later, or give up and move the saga on. */
static void
SagaStepFailed(SagaRow *saga, StepRun *run, const char *error, bool retryable, const char *actor)
{
	bool		forward = strcmp(run->direction, "forward") == 0;
	bool		retry = retryable && run->attempt < run->max_attempts && !(forward && saga->cancelling);
	Datum		values[7] = {UUIDPGetDatum(&saga->id), Int32GetDatum(run->position),
		CStringGetTextDatum(run->direction), CStringGetTextDatum(retry ? "runnable" : "failed"),
	(Datum) 0, CStringGetTextDatum(error), (Datum) 0};
	char		nulls[7] = "    n n";

	if (retry)
	{
		values[6] = TimestampTzGetDatum(RetryAt(run));
		nulls[6] = ' ';
	}
	SagaExec(PLAN_STEP_SET, values, nulls, false, 0);
	LogTransition(&saga->id, run->step, run->direction, run->attempt, "claimed",
				  retry ? "runnable" : "failed", actor, error);
	if (!retry)
		SagaAdvanceFrom(saga, run, false, actor);
}

/* ---------- reports from workers: compare-and-set on (saga, step, attempt) ---------- */

pg_noreturn static void ReportNotClaimed(SagaRow *saga, const char *step, int attempt);

static void
ReportNotClaimed(SagaRow *saga, const char *step, int attempt)
{
	Datum		values[2] = {UUIDPGetDatum(&saga->id), CStringGetTextDatum(step)};

	SagaExec(PLAN_STEP_LATEST, values, NULL, false, 1);
	if (SPI_processed == 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("apicore: step \"%s\" of this saga has not been claimed", step),
				 errhint("Report only steps returned by apicore.saga_claim, with the attempt it returned.")));
	ereport(ERROR,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 errmsg("apicore: step \"%s\" is not claimed (it is %s at attempt %s); attempt %d changes nothing",
					step, ResultText(0, 1), ResultText(0, 2), attempt),
			 errhint("The step was already reported, cancelled or resolved; drop this result.")));
}

/* The claimed run in the first row of PLAN_STEP_CLAIMED / PLAN_STEP_EXPIRED. */
static StepRun *
StepRunFromResult(void)
{
	StepRun    *run = palloc0(sizeof(StepRun));

	run->position = DatumGetInt32(StepValue(0, 1));
	run->direction = StepText(0, 2);
	run->step = StepText(0, 3);
	run->attempt = DatumGetInt32(StepValue(0, 4));
	run->max_attempts = DatumGetInt32(StepValue(0, 5));
	run->backoff = DatumGetIntervalP(StepValue(0, 6));
	run->max_backoff = DatumGetIntervalP(StepValue(0, 7));
	run->worker = StepText(0, 9);
	if (!IsDirection(run->direction))
		ereport(ERROR,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg("apicore: step \"%s\" of this saga has direction %s, which apicore never writes",
						run->step, run->direction ? quote_literal_cstr(run->direction) : "NULL"),
				 errhint("The row was changed outside apicore; end the saga with apicore.saga_resolve.")));
	return run;
}

/* Lock the saga and find the claimed run of `step` at exactly `attempt`. */
static StepRun *
ClaimedRun(FunctionCallInfo fcinfo, SagaRow **saga_out)
{
	pg_uuid_t  *id;
	char	   *step;
	int			attempt;
	SagaRow    *saga;
	StepRun    *run;

	RequireArg(fcinfo, 0, "saga_id", "Pass the saga_id returned by apicore.saga_claim.");
	RequireArg(fcinfo, 1, "step", "Pass the step returned by apicore.saga_claim.");
	RequireArg(fcinfo, 2, "attempt", "Pass the attempt returned by apicore.saga_claim.");
	id = PG_GETARG_UUID_P(0);
	step = text_to_cstring(PG_GETARG_TEXT_PP(1));
	attempt = PG_GETARG_INT32(2);

	saga = LockSagaOrError(id);
	{
		Datum		values[2] = {UUIDPGetDatum(id), CStringGetTextDatum(step)};

		SagaExec(PLAN_STEP_CLAIMED, values, NULL, false, 1);
	}
	if (SPI_processed == 0)
		ReportNotClaimed(saga, step, attempt);

	run = StepRunFromResult();
	if (run->attempt != attempt)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_IN_USE),
				 errmsg("apicore: attempt %d of step \"%s\" is stale: attempt %d owns the step now",
						attempt, step, run->attempt),
				 errhint("Your lease expired and another worker took the step over; drop this result.")));
	*saga_out = saga;
	return run;
}

/* Copy a text result out of SPI memory, finish SPI and become the caller again. */
static Datum
FinishWithState(SagaRow *saga, ApicoreIdentity *id)
{
	Datum		result = SPI_datumTransfer(CStringGetTextDatum(saga->state), false, -1);

	SPI_finish();
	ApicoreRestore(id);
	return result;
}

/* ---------- the direct paths: a claim and a report without the executor ---------- */

/*
 * A one-step claim and the common report (a forward step succeeded, the
 * next is a worker's) are the hot path of every worker.  Through SPI their
 * plans cost more to start, run and stop than the work they do: together
 * they took twice the CPU of a hand-written SKIP LOCKED queue.  These paths
 * do the same work with the table and index access methods, the way logical
 * replication applies a change (execReplication.c): index scans, tuple
 * locks, then ExecSimpleRelationUpdate / ExecSimpleRelationInsert, which
 * check constraints, write the index entries and queue AFTER triggers.
 *
 * They run as apicore's owner, as the SQL paths do (SagaEnter): the caller
 * was let in by EXECUTE on the function, and privileges on the tables are
 * the owner's.  They apply only where they behave exactly as the SQL: a
 * read-write transaction, the owner holds the table privileges the
 * statements need (an owner may revoke its own), no row-level security
 * applies to the owner (FORCE ROW LEVEL SECURITY), no BEFORE ROW trigger on
 * a table they write, and the tables are the ones this library knows (0.2.0
 * columns, nothing added).  Anywhere else the SQL path runs, which raises
 * the error or applies the policy.
 */
typedef enum StepColumn
{
	SC_SAGA, SC_POSITION, SC_DIRECTION, SC_STEP, SC_ACTION, SC_DEFINITION, SC_FUNCTION,
	SC_STATE, SC_ATTEMPT, SC_MAX_ATTEMPTS, SC_TIMEOUT, SC_BACKOFF, SC_MAX_BACKOFF,
	SC_RUN_AFTER, SC_LEASE, SC_WORKER, SC_LAST_ERROR, SC_OUTPUT, SC_CREATED_AT,
	SC_UPDATED_AT, SC_CLAIM_ID, SC_CLAIMED_AT, NUM_STEP_COLUMNS
} StepColumn;

static const DirectColumn step_columns[NUM_STEP_COLUMNS] = {
	{"saga", UUIDOID}, {"position", INT4OID}, {"direction", TEXTOID}, {"step", TEXTOID},
	{"action", TEXTOID}, {"definition", TEXTOID}, {"function", REGPROCEDUREOID},
	{"state", TEXTOID}, {"attempt", INT4OID}, {"max_attempts", INT4OID},
	{"timeout", INTERVALOID}, {"backoff", INTERVALOID}, {"max_backoff", INTERVALOID},
	{"run_after", TIMESTAMPTZOID}, {"lease_expires_at", TIMESTAMPTZOID}, {"worker", TEXTOID},
	{"last_error", TEXTOID}, {"output", JSONBOID}, {"created_at", TIMESTAMPTZOID},
	{"updated_at", TIMESTAMPTZOID}, {"claim_id", INT8OID}, {"claimed_at", TIMESTAMPTZOID}
};

/* a direct insert fills every column: the table has no other */
static const DirectShape step_shape = {"saga_step", step_columns, NUM_STEP_COLUMNS, true};

typedef enum SagaColumn
{
	GC_ID, GC_DEFINITION, GC_VERSION, GC_STATE, GC_POSITION, GC_DIRECTION, GC_PAYLOAD,
	GC_CANCEL_REASON, GC_UPDATED_AT, NUM_SAGA_COLUMNS
} SagaColumn;

static const DirectColumn saga_columns[NUM_SAGA_COLUMNS] = {
	{"id", UUIDOID}, {"definition", TEXTOID}, {"version", INT4OID}, {"state", TEXTOID},
	{"position", INT4OID}, {"direction", TEXTOID}, {"payload", JSONBOID},
	{"cancel_reason", TEXTOID}, {"updated_at", TIMESTAMPTZOID}
};

static const DirectShape saga_shape = {"saga", saga_columns, NUM_SAGA_COLUMNS, false};

typedef enum DefColumn
{
	DC_NAME, DC_FUNCTION, DC_TIMEOUT, DC_MAX_ATTEMPTS, DC_BACKOFF, DC_MAX_BACKOFF, NUM_DEF_COLUMNS
} DefColumn;

static const DirectColumn def_columns[NUM_DEF_COLUMNS] = {
	{"name", TEXTOID}, {"function", REGPROCEDUREOID}, {"timeout", INTERVALOID},
	{"max_attempts", INT4OID}, {"backoff", INTERVALOID}, {"max_backoff", INTERVALOID}
};

static const DirectShape def_shape = {"saga_definition_step", def_columns, NUM_DEF_COLUMNS, false};

typedef enum LogColumn
{
	LC_ID, LC_SAGA, LC_STEP, LC_DIRECTION, LC_ATTEMPT, LC_FROM_STATE, LC_TO_STATE, LC_ACTOR,
	LC_REASON, LC_AT, LC_NEXT_STEP, LC_CLAIM_ID, LC_CLAIMED_AT, LC_CLAIMED_BY, NUM_LOG_COLUMNS
} LogColumn;

static const DirectColumn log_columns[NUM_LOG_COLUMNS] = {
	{"id", INT8OID}, {"saga", UUIDOID}, {"step", TEXTOID}, {"direction", TEXTOID},
	{"attempt", INT4OID}, {"from_state", TEXTOID}, {"to_state", TEXTOID}, {"actor", TEXTOID},
	{"reason", TEXTOID}, {"at", TIMESTAMPTZOID}, {"next_step", TEXTOID},
	{"claim_id", INT8OID}, {"claimed_at", TIMESTAMPTZOID}, {"claimed_by", TEXTOID}
};

static const DirectShape log_shape = {"saga_transition", log_columns, NUM_LOG_COLUMNS, true};

/*
 * The saga tables, their indexes and the 0-based offsets of their columns:
 * resolved once per backend and again after any relcache invalidation of
 * them (ALTER TABLE, DROP EXTENSION, an update of the extension).
 */
typedef struct DirectTables
{
	bool		resolved;
	bool		usable;			/* false: the SQL paths apply */
	Oid			saga;
	Oid			saga_pkey;
	Oid			step;
	Oid			step_pkey;
	Oid			step_runnable;
	Oid			def_step;
	Oid			def_step_pkey;
	Oid			log;
	Oid			log_sequence;
	int			step_col[NUM_STEP_COLUMNS];
	int			saga_col[NUM_SAGA_COLUMNS];
	int			def_col[NUM_DEF_COLUMNS];
	int			log_col[NUM_LOG_COLUMNS];
} DirectTables;

static DirectTables direct;
static bool direct_callback_registered = false;

static void
DirectTablesInvalidate(Datum arg, Oid relid)
{
	if (!OidIsValid(relid) || relid == direct.saga || relid == direct.step ||
		relid == direct.def_step || relid == direct.log)
		direct.resolved = false;
}

/* `shape`'s column offsets in table `relid` into `offsets`; false: not that shape. */
static bool
FindColumns(Oid relid, const DirectShape *shape, int *offsets)
{
	Relation	rel = table_open(relid, AccessShareLock);
	const int  *found = DirectColumns(rel, shape);

	if (found != NULL)
		memcpy(offsets, found, sizeof(int) * shape->ncolumns);
	table_close(rel, AccessShareLock);
	return found != NULL;
}

static void
ResolveDirectTables(void)
{
	Oid			nsp = get_namespace_oid("apicore", true);

	if (!direct_callback_registered)
	{
		CacheRegisterRelcacheCallback(DirectTablesInvalidate, (Datum) 0);
		direct_callback_registered = true;
	}
	memset(&direct, 0, sizeof(direct));
	direct.resolved = true;
	if (!OidIsValid(nsp))
		return;
	direct.saga = get_relname_relid("saga", nsp);
	direct.saga_pkey = get_relname_relid("saga_pkey", nsp);
	direct.step = get_relname_relid("saga_step", nsp);
	direct.step_pkey = get_relname_relid("saga_step_pkey", nsp);
	direct.step_runnable = get_relname_relid("saga_step_runnable", nsp);
	direct.def_step = get_relname_relid("saga_definition_step", nsp);
	direct.def_step_pkey = get_relname_relid("saga_definition_step_pkey", nsp);
	direct.log = get_relname_relid("saga_transition", nsp);
	direct.log_sequence = get_relname_relid("saga_transition_id_seq", nsp);
	direct.usable = OidIsValid(direct.saga) && OidIsValid(direct.saga_pkey) &&
		OidIsValid(direct.step) && OidIsValid(direct.step_pkey) &&
		OidIsValid(direct.step_runnable) && OidIsValid(direct.def_step) &&
		OidIsValid(direct.def_step_pkey) && OidIsValid(direct.log) &&
		OidIsValid(direct.log_sequence) &&
		FindColumns(direct.step, &step_shape, direct.step_col) &&
		FindColumns(direct.saga, &saga_shape, direct.saga_col) &&
		FindColumns(direct.def_step, &def_shape, direct.def_col) &&
		FindColumns(direct.log, &log_shape, direct.log_col);
}

/*
 * The direct paths may run in this transaction, for this role, as far as
 * the tables they only read are concerned; each written table is checked
 * when opened (OpenDirect).
 */
static bool
SagaDirectApplies(bool report)
{
	/* read-only transactions and standbys: the executor raises 25006 */
	if (XactReadOnly || IsInParallelMode())
		return false;
	if (!direct.resolved)
		ResolveDirectTables();
	if (!direct.usable)
		return false;
	if (!report)
		return DirectMay(direct.saga, GetUserId(), ACL_SELECT);
	return DirectMay(direct.def_step, GetUserId(), ACL_SELECT);
}

/*
 * A table opened for a direct path to write `events` to, needing `mode`;
 * *ok = false when src/direct.c says the SQL must run instead, or when a
 * saga table changed since SagaDirectApplies (open the tables only read
 * before the written ones, so that this sees their invalidations too).
 */
static Relation
OpenDirect(Oid relid, const DirectShape *shape, AclMode mode, int events, bool *ok)
{
	Relation	rel = table_open(relid, RowExclusiveLock);

	if (!DirectApplies(rel, shape, GetUserId(), mode, events) || !direct.resolved)
		*ok = false;
	return rel;
}

/* ----- the direct claim ----- */

/* What a claim may take: CLAIMABLE_SQL's WHERE clause, its filter unpacked once. */
typedef struct ClaimScope
{
	TimestampTz from;
	TimestampTz now;
	int			ndefinitions;	/* -1: no filter */
	Datum	   *definitions;
	bool	   *definition_nulls;
} ClaimScope;

static bool
InFilter(Datum definition, const ClaimScope *scope)
{
	if (scope->ndefinitions < 0)
		return true;
	for (int i = 0; i < scope->ndefinitions; i++)
		if (!scope->definition_nulls[i] &&
			ApicoreTextEqual(DatumGetTextPP(definition), DatumGetTextPP(scope->definitions[i])))
			return true;
	return false;
}

/* The step row qualifies for CLAIMABLE_SQL's WHERE clause. */
static bool
Claimable(TupleTableSlot *slot, const ClaimScope *scope)
{
	Datum	   *v = slot->tts_values;
	bool	   *null = slot->tts_isnull;
	const int  *col = direct.step_col;
	TimestampTz run_after;

	slot_getallattrs(slot);
	if (null[col[SC_STATE]] || !DirectTextEquals(v[col[SC_STATE]], "runnable") ||
		!null[col[SC_FUNCTION]] || null[col[SC_RUN_AFTER]])
		return false;
	run_after = DatumGetTimestampTz(v[col[SC_RUN_AFTER]]);
	return run_after >= scope->from && run_after <= scope->now &&
		InFilter(v[col[SC_DEFINITION]], scope);
}

/*
 * Lock the oldest claimable step into `slot`, skipping rows another claim
 * holds and rechecking a row that changed, as FOR UPDATE SKIP LOCKED does
 * (ExecLockRows).  False: none.
 */
static bool
LockOldestClaimable(Relation step, Snapshot snapshot, ArrayType *filter, TimestampTz from,
					TupleTableSlot *slot)
{
	ClaimScope	scope = {.from = from, .now = GetCurrentTransactionStartTimestamp(), .ndefinitions = -1};
	Relation	index = index_open(direct.step_runnable, RowExclusiveLock);
	ScanKeyData keys[2];
	IndexScanDesc scan = ApicoreIndexBeginscan(step, index, snapshot, 2, 0);
	bool		locked = false;

	if (filter != NULL)
		deconstruct_array(filter, TEXTOID, -1, false, TYPALIGN_INT,
						  &scope.definitions, &scope.definition_nulls, &scope.ndefinitions);
	ScanKeyInit(&keys[0], 1, BTGreaterEqualStrategyNumber, F_TIMESTAMP_GE, TimestampTzGetDatum(from));
	ScanKeyInit(&keys[1], 1, BTLessEqualStrategyNumber, F_TIMESTAMP_LE, TimestampTzGetDatum(scope.now));
	index_rescan(scan, keys, 2, NULL, 0);
	while (!locked && index_getnext_slot(scan, ForwardScanDirection, slot))
	{
		bool		traversed;

		/* not TM_Ok (locked by another claim, gone): skip it */
		if (Claimable(slot, &scope) &&
			DirectLockRow(step, snapshot, slot, LockTupleExclusive, LockWaitSkip, &traversed) == TM_Ok)
			locked = !traversed || Claimable(slot, &scope);
	}
	index_endscan(scan);
	index_close(index, NoLock);
	return locked;
}

/* The claimed version of the locked row: CLAIM_SET_SQL. */
static void
StoreClaimedVersion(TupleTableSlot *old, TupleTableSlot *claimed, const char *worker)
{
	const int  *col = direct.step_col;
	TimestampTz now = GetCurrentTransactionStartTimestamp();

	DirectCopyValues(claimed, old);
	DirectSetValue(claimed, col[SC_STATE], CStringGetTextDatum("claimed"), false);
	DirectSetValue(claimed, col[SC_ATTEMPT], Int32GetDatum(DatumGetInt32(old->tts_values[col[SC_ATTEMPT]]) + 1), false);
	DirectSetValue(claimed, col[SC_WORKER], CStringGetTextDatum(worker), false);
	DirectSetValue(claimed, col[SC_LEASE], DirectFunctionCall2(timestamptz_pl_interval, TimestampTzGetDatum(now),
														 old->tts_values[col[SC_TIMEOUT]]), false);
	DirectSetValue(claimed, col[SC_UPDATED_AT], TimestampTzGetDatum(now), false);
	DirectSetValue(claimed, col[SC_CLAIM_ID], Int64GetDatum(nextval_internal(direct.log_sequence, true)), false);
	DirectSetValue(claimed, col[SC_CLAIMED_AT], TimestampTzGetDatum(GetCurrentTimestamp()), false);
	ExecStoreVirtualTuple(claimed);
}

/* OUTPUTS_SQL: the output of each forward step of the saga that succeeded. */
static Datum
SagaOutputs(Relation step, Snapshot snapshot, Datum saga)
{
	static const Oid procs[1] = {F_UUID_EQ};
	const int  *col = direct.step_col;
	Relation	index = index_open(direct.step_pkey, AccessShareLock);
	TupleTableSlot *slot = table_slot_create(step, NULL);
	ScanKeyData key;
	IndexScanDesc scan = DirectKeyScan(step, index, snapshot, 1, procs, &saga, &key);
	JsonbParseState *state = NULL;
	JsonbValue *result;

	pushJsonbValue(&state, WJB_BEGIN_OBJECT, NULL);
	while (index_getnext_slot(scan, ForwardScanDirection, slot))
	{
		JsonbValue	name;
		JsonbValue	output;

		slot_getallattrs(slot);
		if (!DirectTextEquals(slot->tts_values[col[SC_DIRECTION]], "forward") ||
			!DirectTextEquals(slot->tts_values[col[SC_STATE]], "succeeded"))
			continue;
		name.type = jbvString;
		name.val.string.val = TextDatumGetCString(slot->tts_values[col[SC_STEP]]);
		name.val.string.len = strlen(name.val.string.val);
		pushJsonbValue(&state, WJB_KEY, &name);
		output.type = jbvNull;
		if (!slot->tts_isnull[col[SC_OUTPUT]])
		{
			Jsonb	   *jb = DatumGetJsonbP(slot->tts_values[col[SC_OUTPUT]]);

			output.type = jbvBinary;
			output.val.binary.data = &jb->root;
			output.val.binary.len = VARSIZE(jb) - VARHDRSZ;
		}
		pushJsonbValue(&state, WJB_VALUE, &output);
	}
	result = pushJsonbValue(&state, WJB_END_OBJECT, NULL);
	index_endscan(scan);
	index_close(index, NoLock);
	ExecDropSingleTupleTableSlot(slot);
	return JsonbPGetDatum(JsonbValueToJsonb(result));
}

/* The claim's result row, as CLAIM_RETURNING_SQL. */
static void
PutClaimRow(Relation step, Relation saga, Snapshot snapshot, TupleTableSlot *claimed,
			Tuplestorestate *tupstore, TupleDesc tupdesc)
{
	static const Oid procs[1] = {F_UUID_EQ};
	const int  *col = direct.step_col;
	Datum	   *v = claimed->tts_values;
	TupleTableSlot *saga_row = table_slot_create(saga, NULL);
	Datum		row[CLAIM_RESULT_COLUMNS];
	bool		nulls[CLAIM_RESULT_COLUMNS] = {0};

	/* CLAIM_ONE_SQL joins the saga: a step without one is not claimed */
	if (!DirectFetchByKey(saga, direct.saga_pkey, snapshot, 1, procs, &v[col[SC_SAGA]], saga_row))
		elog(ERROR, "apicore: a claimable step belongs to no saga");
	row[0] = v[col[SC_SAGA]];
	row[1] = saga_row->tts_values[direct.saga_col[GC_DEFINITION]];
	row[2] = saga_row->tts_values[direct.saga_col[GC_VERSION]];
	row[3] = v[col[SC_STEP]];
	row[4] = v[col[SC_DIRECTION]];
	row[5] = v[col[SC_ATTEMPT]];
	row[6] = saga_row->tts_values[direct.saga_col[GC_PAYLOAD]];
	row[7] = SagaOutputs(step, snapshot, v[col[SC_SAGA]]);
	row[8] = CStringGetTextDatum(psprintf("%s:%s:%s",
										  DatumGetCString(DirectFunctionCall1(uuid_out, v[col[SC_SAGA]])),
										  TextDatumGetCString(v[col[SC_STEP]]),
										  TextDatumGetCString(v[col[SC_DIRECTION]])));
	row[9] = v[col[SC_LEASE]];
	row[10] = v[col[SC_ACTION]];
	tuplestore_putvalues(tupstore, tupdesc, row, nulls);
	ExecDropSingleTupleTableSlot(saga_row);
}

/*
 * Claim one step directly into `tupstore`, scanning from `from`: 1 when it
 * claimed a step (its run_after in *run_after), 0 when none is claimable,
 * -1 when the SQL path applies.
 */
static int
ClaimOneDirectly(const char *worker, ArrayType *filter, TimestampTz from,
				 Tuplestorestate *tupstore, TupleDesc tupdesc, TimestampTz *run_after)
{
	bool		ok = true;
	Relation	saga;
	Relation	step;
	Snapshot	snapshot;
	TupleTableSlot *locked;
	TupleTableSlot *claimed;
	int			result = 0;

	if (!SagaDirectApplies(false))
		return -1;
	saga = table_open(direct.saga, AccessShareLock);
	step = OpenDirect(direct.step, &step_shape, ACL_SELECT | ACL_UPDATE, DIRECT_UPDATE, &ok);
	if (!ok)
	{
		table_close(step, NoLock);
		table_close(saga, NoLock);
		return -1;
	}
	snapshot = DirectBeginStatement();
	locked = table_slot_create(step, NULL);
	claimed = MakeSingleTupleTableSlot(RelationGetDescr(step), &TTSOpsVirtual);
	if (LockOldestClaimable(step, snapshot, filter, from, locked))
	{
		DirectWrite w;

		DirectBeginWrite(&w, &step, 1, snapshot);
		StoreClaimedVersion(locked, claimed, worker);
		DirectUpdate(&w, 0, locked, claimed);
		DirectEndWrite(&w);
		PutClaimRow(step, saga, snapshot, claimed, tupstore, tupdesc);
		*run_after = DatumGetTimestampTz(claimed->tts_values[direct.step_col[SC_RUN_AFTER]]);
		result = 1;
	}
	ExecDropSingleTupleTableSlot(claimed);
	ExecDropSingleTupleTableSlot(locked);
	DirectEndStatement();
	table_close(step, NoLock);
	table_close(saga, NoLock);
	return result;
}

/* ----- the direct report ----- */

/* The saga runs forward and is not being cancelled: a report may move it. */
static bool
SagaMovable(TupleTableSlot *row)
{
	const int  *col = direct.saga_col;

	return DirectTextEquals(row->tts_values[col[GC_STATE]], "running") &&
		row->tts_isnull[col[GC_CANCEL_REASON]] &&
		DirectTextEquals(row->tts_values[col[GC_DIRECTION]], "forward");
}

/*
 * Lock a row found by `snapshot` that `qualifies`, as UPDATE does: the
 * condition is tested first (a row that does not qualify is not waited
 * for), then the row is locked and, when it changed meanwhile, its latest
 * version tested again (EvalPlanQual).
 */
static bool
LockIfQualifies(Relation rel, Snapshot snapshot, TupleTableSlot *row, bool (*qualifies) (TupleTableSlot *, void *),
				void *arg)
{
	bool		traversed;

	return qualifies(row, arg) &&
		DirectLockRow(rel, snapshot, row, LockTupleNoKeyExclusive, LockWaitBlock, &traversed) == TM_Ok &&
		(!traversed || qualifies(row, arg));
}

static bool
SagaMovableTest(TupleTableSlot *row, void *arg)
{
	return SagaMovable(row);
}

/* Lock the saga of a report: false unless it runs forward, not being cancelled. */
static bool
LockRunningSaga(Relation saga, Snapshot snapshot, Datum id, TupleTableSlot *row)
{
	static const Oid procs[1] = {F_UUID_EQ};

	return DirectFetchByKey(saga, direct.saga_pkey, snapshot, 1, procs, &id, row) &&
		LockIfQualifies(saga, snapshot, row, SagaMovableTest, NULL);
}

/* The definition's step after the saga's current one, when it is a worker's. */
static bool
FetchNextWorkerStep(Relation def, Snapshot snapshot, TupleTableSlot *saga_row, TupleTableSlot *row)
{
	static const Oid procs[3] = {F_TEXTEQ, F_INT4EQ, F_INT4EQ};
	const int  *col = direct.saga_col;
	Datum		key[3] = {saga_row->tts_values[col[GC_DEFINITION]], saga_row->tts_values[col[GC_VERSION]],
	Int32GetDatum(DatumGetInt32(saga_row->tts_values[col[GC_POSITION]]) + 1)};

	return DirectFetchByKey(def, direct.def_step_pkey, snapshot, 3, procs, key, row) &&
		row->tts_isnull[direct.def_col[DC_FUNCTION]];
}

/* What a report names: a step and the attempt that claimed it. */
typedef struct ReportedRun
{
	Datum		step;
	int32		attempt;
} ReportedRun;

static bool
RunClaimedAsReported(TupleTableSlot *row, void *arg)
{
	ReportedRun *reported = arg;
	const int  *col = direct.step_col;

	return DirectTextEquals(row->tts_values[col[SC_STATE]], "claimed") &&
		!row->tts_isnull[col[SC_WORKER]] &&
		DatumGetInt32(row->tts_values[col[SC_ATTEMPT]]) == reported->attempt &&
		ApicoreTextEqual(DatumGetTextPP(row->tts_values[col[SC_STEP]]), DatumGetTextPP(reported->step));
}

/* Lock the reported run: the saga's current forward step, named and claimed as reported. */
static bool
LockClaimedRun(Relation step, Snapshot snapshot, TupleTableSlot *saga_row, ReportedRun *reported,
			   TupleTableSlot *row)
{
	static const Oid procs[3] = {F_UUID_EQ, F_INT4EQ, F_TEXTEQ};
	Datum		key[3] = {saga_row->tts_values[direct.saga_col[GC_ID]],
	saga_row->tts_values[direct.saga_col[GC_POSITION]], CStringGetTextDatum("forward")};

	return DirectFetchByKey(step, direct.step_pkey, snapshot, 3, procs, key, row) &&
		LockIfQualifies(step, snapshot, row, RunClaimedAsReported, reported);
}

/* The next run's row, as PLAN_FAST_SUCCEED's INSERT with the table's defaults. */
static void
StoreNextRun(TupleTableSlot *slot, TupleTableSlot *saga_row, TupleTableSlot *def_row)
{
	const int  *col = direct.step_col;
	const int  *def = direct.def_col;
	Datum		now = TimestampTzGetDatum(GetCurrentTransactionStartTimestamp());

	ExecClearTuple(slot);
	for (int c = 0; c < NUM_STEP_COLUMNS; c++)
		DirectSetValue(slot, col[c], (Datum) 0, true);
	DirectSetValue(slot, col[SC_SAGA], saga_row->tts_values[direct.saga_col[GC_ID]], false);
	DirectSetValue(slot, col[SC_POSITION],
			 Int32GetDatum(DatumGetInt32(saga_row->tts_values[direct.saga_col[GC_POSITION]]) + 1), false);
	DirectSetValue(slot, col[SC_DIRECTION], CStringGetTextDatum("forward"), false);
	DirectSetValue(slot, col[SC_STEP], def_row->tts_values[def[DC_NAME]], false);
	DirectSetValue(slot, col[SC_ACTION], def_row->tts_values[def[DC_NAME]], false);
	DirectSetValue(slot, col[SC_DEFINITION], saga_row->tts_values[direct.saga_col[GC_DEFINITION]], false);
	DirectSetValue(slot, col[SC_STATE], CStringGetTextDatum("runnable"), false);
	DirectSetValue(slot, col[SC_ATTEMPT], Int32GetDatum(0), false);
	DirectSetValue(slot, col[SC_MAX_ATTEMPTS], def_row->tts_values[def[DC_MAX_ATTEMPTS]], false);
	DirectSetValue(slot, col[SC_TIMEOUT], def_row->tts_values[def[DC_TIMEOUT]], false);
	DirectSetValue(slot, col[SC_BACKOFF], def_row->tts_values[def[DC_BACKOFF]], false);
	DirectSetValue(slot, col[SC_MAX_BACKOFF], def_row->tts_values[def[DC_MAX_BACKOFF]], false);
	DirectSetValue(slot, col[SC_RUN_AFTER], now, false);
	DirectSetValue(slot, col[SC_CREATED_AT], now, false);
	DirectSetValue(slot, col[SC_UPDATED_AT], now, false);
	ExecStoreVirtualTuple(slot);
}

/* The report's one log row: the run's claim, its success and the next run runnable. */
static void
StoreSuccessLog(TupleTableSlot *slot, TupleTableSlot *run, TupleTableSlot *def_row)
{
	const int  *col = direct.log_col;
	const int  *sc = direct.step_col;

	ExecClearTuple(slot);
	for (int c = 0; c < NUM_LOG_COLUMNS; c++)
		DirectSetValue(slot, col[c], (Datum) 0, true);
	/* the identity column's sequence, which checks no privilege either */
	DirectSetValue(slot, col[LC_ID], Int64GetDatum(nextval_internal(direct.log_sequence, false)), false);
	DirectSetValue(slot, col[LC_SAGA], run->tts_values[sc[SC_SAGA]], false);
	DirectSetValue(slot, col[LC_STEP], run->tts_values[sc[SC_STEP]], false);
	DirectSetValue(slot, col[LC_DIRECTION], CStringGetTextDatum("forward"), false);
	DirectSetValue(slot, col[LC_ATTEMPT], run->tts_values[sc[SC_ATTEMPT]], false);
	DirectSetValue(slot, col[LC_FROM_STATE], CStringGetTextDatum("claimed"), false);
	DirectSetValue(slot, col[LC_TO_STATE], CStringGetTextDatum("succeeded"), false);
	DirectSetValue(slot, col[LC_ACTOR], run->tts_values[sc[SC_WORKER]], run->tts_isnull[sc[SC_WORKER]]);
	DirectSetValue(slot, col[LC_AT], TimestampTzGetDatum(GetCurrentTimestamp()), false);
	DirectSetValue(slot, col[LC_NEXT_STEP], def_row->tts_values[direct.def_col[DC_NAME]], false);
	DirectSetValue(slot, col[LC_CLAIM_ID], run->tts_values[sc[SC_CLAIM_ID]], run->tts_isnull[sc[SC_CLAIM_ID]]);
	DirectSetValue(slot, col[LC_CLAIMED_AT], run->tts_values[sc[SC_CLAIMED_AT]], run->tts_isnull[sc[SC_CLAIMED_AT]]);
	DirectSetValue(slot, col[LC_CLAIMED_BY], run->tts_values[sc[SC_WORKER]], run->tts_isnull[sc[SC_WORKER]]);
	ExecStoreVirtualTuple(slot);
}

/*
 * Write the report: the run succeeded, the saga moves to the next step, the
 * next run is runnable, one log row (PLAN_FAST_SUCCEED's four writes).
 */
static void
WriteSuccess(Relation *rels, Snapshot snapshot, TupleTableSlot *saga_row, TupleTableSlot *run,
			 TupleTableSlot *def_row, Datum output, bool output_null)
{
	DirectWrite w;
	TupleTableSlot *saga_new;
	TupleTableSlot *run_new;
	TupleTableSlot *next_run;
	TupleTableSlot *log_row;
	Datum		now = TimestampTzGetDatum(GetCurrentTransactionStartTimestamp());
	const int  *sc = direct.step_col;

	DirectBeginWrite(&w, rels, 3, snapshot);
	saga_new = DirectSlot(&w, 0);
	run_new = DirectSlot(&w, 1);
	next_run = DirectSlot(&w, 1);
	log_row = DirectSlot(&w, 2);
	DirectCopyValues(saga_new, saga_row);
	DirectSetValue(saga_new, direct.saga_col[GC_POSITION],
			 Int32GetDatum(DatumGetInt32(saga_row->tts_values[direct.saga_col[GC_POSITION]]) + 1), false);
	DirectSetValue(saga_new, direct.saga_col[GC_UPDATED_AT], now, false);
	ExecStoreVirtualTuple(saga_new);
	DirectUpdate(&w, 0, saga_row, saga_new);

	DirectCopyValues(run_new, run);
	DirectSetValue(run_new, sc[SC_STATE], CStringGetTextDatum("succeeded"), false);
	DirectSetValue(run_new, sc[SC_OUTPUT], output, output_null);
	DirectSetValue(run_new, sc[SC_LEASE], (Datum) 0, true);
	DirectSetValue(run_new, sc[SC_UPDATED_AT], now, false);
	ExecStoreVirtualTuple(run_new);
	DirectUpdate(&w, 1, run, run_new);

	StoreNextRun(next_run, saga_row, def_row);
	DirectInsert(&w, 1, next_run);
	StoreSuccessLog(log_row, run, def_row);
	DirectInsert(&w, 2, log_row);
	DirectEndWrite(&w);
}

/*
 * The common report directly: a running saga's forward step succeeded and
 * the next step is a worker's.  1: done; 0: not that case, nothing written
 * (the general path raises or handles it); -1: the SQL paths apply.  The
 * saga row is locked first, then the step's, as everywhere in this file.
 */
static int
SucceedDirectly(FunctionCallInfo fcinfo)
{
	bool		ok = true;
	Relation	rels[3];
	Relation	def;
	Snapshot	snapshot;
	TupleTableSlot *saga_row;
	TupleTableSlot *run;
	TupleTableSlot *def_row;
	ReportedRun reported;
	int			result = 0;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1) || PG_ARGISNULL(2) || !SagaDirectApplies(true))
		return -1;
	reported.step = PG_GETARG_DATUM(1);
	reported.attempt = PG_GETARG_INT32(2);
	def = table_open(direct.def_step, AccessShareLock);
	rels[0] = OpenDirect(direct.saga, &saga_shape, ACL_SELECT | ACL_UPDATE, DIRECT_UPDATE, &ok);
	rels[1] = OpenDirect(direct.step, &step_shape, ACL_SELECT | ACL_UPDATE | ACL_INSERT,
						 DIRECT_UPDATE | DIRECT_INSERT, &ok);
	rels[2] = OpenDirect(direct.log, &log_shape, ACL_INSERT, DIRECT_INSERT, &ok);
	if (ok)
	{
		snapshot = DirectBeginStatement();
		saga_row = table_slot_create(rels[0], NULL);
		run = table_slot_create(rels[1], NULL);
		def_row = table_slot_create(def, NULL);
		if (LockRunningSaga(rels[0], snapshot, PG_GETARG_DATUM(0), saga_row) &&
			FetchNextWorkerStep(def, snapshot, saga_row, def_row) &&
			LockClaimedRun(rels[1], snapshot, saga_row, &reported, run))
		{
			SagaRow		saga = {.id = *PG_GETARG_UUID_P(0)};

			WriteSuccess(rels, snapshot, saga_row, run, def_row,
						 PG_ARGISNULL(3) ? (Datum) 0 : PointerGetDatum(PG_DETOAST_DATUM(PG_GETARG_DATUM(3))),
						 PG_ARGISNULL(3));
			NotifyRunnable(&saga, TextDatumGetCString(saga_row->tts_values[direct.saga_col[GC_DEFINITION]]),
						   TextDatumGetCString(def_row->tts_values[direct.def_col[DC_NAME]]));
			result = 1;
		}
		ExecDropSingleTupleTableSlot(def_row);
		ExecDropSingleTupleTableSlot(run);
		ExecDropSingleTupleTableSlot(saga_row);
		DirectEndStatement();
	}
	table_close(def, NoLock);
	for (int i = 0; i < 3; i++)
		table_close(rels[i], NoLock);
	return ok ? result : -1;
}

/* The one-statement path of PLAN_FAST_SUCCEED; false when it does not apply. */
static bool
FastSucceed(FunctionCallInfo fcinfo)
{
	Datum		values[4];
	char		nulls[4] = "    ";
	SagaRow		saga;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1) || PG_ARGISNULL(2))
		return false;			/* the general path reports the NULL */
	for (int i = 0; i < 4; i++)
		values[i] = PG_ARGISNULL(i) ? (Datum) 0 : PG_GETARG_DATUM(i);
	nulls[3] = PG_ARGISNULL(3) ? 'n' : ' ';
	SagaExec(PLAN_FAST_SUCCEED, values, nulls, false, 1);
	if (SPI_processed == 0 || !DatumGetBool(ResultValue(0, 3, NULL)))
		return false;
	saga.id = *PG_GETARG_UUID_P(0);
	NotifyRunnable(&saga, ResultText(0, 2), ResultText(0, 1));
	return true;
}

Datum
apicore_saga_step_succeeded(PG_FUNCTION_ARGS)
{
	SagaRow    *saga;
	StepRun    *run;
	Datum		output = PG_ARGISNULL(3) ? (Datum) 0 : PG_GETARG_DATUM(3);
	int			direct_result;
	ApicoreIdentity id;

	(void) SagaEnter(&id);
	direct_result = SucceedDirectly(fcinfo);
	if (direct_result == 1)
	{
		/* what test sql/saga_direct.sql watches for, on every PostgreSQL version */
		elog(DEBUG1, "apicore: saga report ran without the executor");
		ApicoreRestore(&id);
		PG_RETURN_TEXT_P(cstring_to_text("running"));
	}
	SPI_connect();
	if (direct_result < 0 && FastSucceed(fcinfo))
	{
		SPI_finish();
		ApicoreRestore(&id);
		PG_RETURN_TEXT_P(cstring_to_text("running"));
	}
	run = ClaimedRun(fcinfo, &saga);
	if (!RecordSuccess(saga, run, output, PG_ARGISNULL(3), run->worker))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("apicore: claimed step \"%s\" changed under the saga lock", run->step)));
	SagaAdvanceFrom(saga, run, true, run->worker);
	PG_RETURN_DATUM(FinishWithState(saga, &id));
}

Datum
apicore_saga_step_failed(PG_FUNCTION_ARGS)
{
	SagaRow    *saga;
	StepRun    *run;
	char	   *error;
	bool		retryable;
	ApicoreIdentity id;

	RequireArg(fcinfo, 3, "error", "Pass a description of what failed; it is kept in the saga log.");
	RequireArg(fcinfo, 4, "retryable", "Pass true to retry with backoff, false to give up the step now.");
	error = text_to_cstring(PG_GETARG_TEXT_PP(3));
	retryable = PG_GETARG_BOOL(4);
	(void) SagaEnter(&id);
	SPI_connect();
	run = ClaimedRun(fcinfo, &saga);
	SagaStepFailed(saga, run, error, retryable, run->worker);
	PG_RETURN_DATUM(FinishWithState(saga, &id));
}

Datum
apicore_saga_heartbeat(PG_FUNCTION_ARGS)
{
	Datum		values[3];
	TimestampTz lease;
	ApicoreIdentity id;

	RequireArg(fcinfo, 0, "saga_id", "Pass the saga_id returned by apicore.saga_claim.");
	RequireArg(fcinfo, 1, "step", "Pass the step returned by apicore.saga_claim.");
	RequireArg(fcinfo, 2, "attempt", "Pass the attempt returned by apicore.saga_claim.");
	values[0] = PG_GETARG_DATUM(0);
	values[1] = PG_GETARG_DATUM(1);
	values[2] = PG_GETARG_DATUM(2);
	(void) SagaEnter(&id);
	SPI_connect();
	SagaExec(PLAN_HEARTBEAT, values, NULL, false, 1);
	if (SPI_processed == 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_IN_USE),
				 errmsg("apicore: step \"%s\" attempt %d no longer holds its lease",
						TextDatumGetCString(values[1]), PG_GETARG_INT32(2)),
				 errhint("The lease expired and the step was reclaimed, or it was cancelled; stop working on it.")));
	lease = DatumGetTimestampTz(ResultValue(0, 1, NULL));
	SPI_finish();
	ApicoreRestore(&id);
	PG_RETURN_TIMESTAMPTZ(lease);
}

/* ---------- saga_define ---------- */

/* One validated step of a definition. */
typedef struct StepDef
{
	char	   *name;
	char	   *compensate;
	Oid			function;
	Oid			compensate_function;
	Interval   *timeout;
	int			max_attempts;
	Interval   *backoff;
	Interval   *max_backoff;
} StepDef;

pg_noreturn static void StepError(int index, const char *field, const char *problem,
								  const char *hint);

static void
StepError(int index, const char *field, const char *problem, const char *hint)
{
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("apicore: steps[%d].%s %s", index, field, problem),
			 errhint("%s", hint)));
}

static char *
StepString(JsonbContainer *step, int index, const char *field, bool required)
{
	JsonbValue *v = getKeyJsonValueFromContainer(step, field, strlen(field), NULL);

	if (v == NULL || v->type == jbvNull)
	{
		if (required)
			StepError(index, field, "is missing",
					  "Every step is an object with a unique, non-empty \"name\".");
		return NULL;
	}
	if (v->type != jbvString || v->val.string.len == 0 || v->val.string.len > MAX_NAME_LEN)
		StepError(index, field, psprintf("must be a string of 1 to %d characters", MAX_NAME_LEN),
				  "Write it as a JSON string, e.g. \"charge_card\".");
	return pnstrdup(v->val.string.val, v->val.string.len);
}

/* Parse an interval without throwing; false when it does not parse. */
static bool
ParseInterval(const char *str, Interval *result)
{
	char		workbuf[256];
	char	   *field[MAXDATEFIELDS];
	int			ftype[MAXDATEFIELDS];
	int			nf;
	int			dtype;
	struct pg_itm_in itm_in;
	char	   *copy = pstrdup(str);

	if (ParseDateTime(str, workbuf, sizeof(workbuf), field, ftype, MAXDATEFIELDS, &nf) != 0 ||
		(DecodeInterval(field, ftype, nf, INTERVAL_FULL_RANGE, &dtype, &itm_in) != 0 &&
		 DecodeISO8601Interval(copy, &dtype, &itm_in) != 0))
		return false;
	return dtype == DTK_DELTA && itmin2interval(&itm_in, result) == 0;
}

static Interval *
StepInterval(JsonbContainer *step, int index, const char *field, const char *dflt)
{
	char	   *str = StepString(step, index, field, false);
	Interval   *result = palloc0(sizeof(Interval));

	if (str == NULL)
		str = (char *) dflt;
	if (!ParseInterval(str, result) || !SpanUsable(result))
		StepError(index, field, psprintf("must be a positive interval of at most %s, got \"%s\"",
										 MAX_SPAN_TEXT, str),
				  "Write a positive PostgreSQL interval as a string, e.g. \"30 seconds\".");
	return result;
}

static int
StepMaxAttempts(JsonbContainer *step, int index)
{
	JsonbValue *v = getKeyJsonValueFromContainer(step, "max_attempts", strlen("max_attempts"), NULL);
	char	   *text;
	char	   *end;
	long		n;

	if (v == NULL || v->type == jbvNull)
		return DEFAULT_MAX_ATTEMPTS;
	if (v->type != jbvNumeric)
		StepError(index, "max_attempts", "must be a number", "Write an integer from 1 to 1000, e.g. 5.");
	text = DatumGetCString(DirectFunctionCall1(numeric_out, NumericGetDatum(v->val.numeric)));
	n = strtol(text, &end, 10);
	if (*end != '\0' || n < 1 || n > 1000)
		StepError(index, "max_attempts", psprintf("must be an integer from 1 to 1000, got %s", text),
				  "Write an integer from 1 to 1000, e.g. 5.");
	return (int) n;
}

/*
 * A function (jsonb) or (jsonb, jsonb) returning jsonb that `definer` (the
 * caller: the name is looked up in their search_path) may run as a step.
 */
static Oid
StepFunction(JsonbContainer *step, int index, const char *field, Oid definer)
{
	char	   *name = StepString(step, index, field, false);
	List	   *qualified;
	Oid			args[2] = {JSONBOID, JSONBOID};
	Oid			fn;
	int			nargs;
	int			sqlstate;
	char	   *problem;

	if (name == NULL)
		return InvalidOid;
	qualified = ApicoreQualifiedNameList(name);
	fn = LookupFuncName(qualified, 2, args, true);
	if (!OidIsValid(fn))
		fn = LookupFuncName(qualified, 1, args, true);
	if (!OidIsValid(fn))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_FUNCTION),
				 errmsg("apicore: steps[%d].%s names %s, which is not a function taking (jsonb) or (jsonb, jsonb)",
						index, field, name),
				 errhint("Create the function first, e.g. CREATE FUNCTION %s(payload jsonb) RETURNS jsonb ...",
						 name)));
	if (get_func_rettype(fn) != JSONBOID || get_func_retset(fn))
		StepError(index, field, psprintf("names %s, which does not return one jsonb value", name),
				  "A local step function returns jsonb (its output), not SETOF.");
	problem = LocalFunctionProblem(fn, definer, &nargs, &sqlstate);
	if (problem != NULL)
		ereport(ERROR,
				(errcode(sqlstate),
				 errmsg("apicore: steps[%d].%s: %s", index, field, problem),
				 errhint("A local step runs as the role that defines the saga: define it as a role that may execute the function and, for a superuser, one that a superuser owns.")));
	return fn;
}

static void
CheckStepKeys(JsonbContainer *step, int index)
{
	static const char *const known[] = {"name", "compensate", "function", "compensate_function",
	"timeout", "max_attempts", "backoff", "max_backoff"};
	JsonbIterator *it = JsonbIteratorInit(step);
	JsonbValue	v;
	JsonbIteratorToken tok;

	while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
	{
		bool		ok = false;

		if (tok != WJB_KEY)
			continue;
		for (int i = 0; i < lengthof(known); i++)
			ok |= strlen(known[i]) == v.val.string.len &&
				strncmp(known[i], v.val.string.val, v.val.string.len) == 0;
		if (!ok)
			StepError(index, pnstrdup(v.val.string.val, v.val.string.len), "is not a step setting",
					  "Step settings are name, compensate, function, compensate_function, timeout, max_attempts, backoff, max_backoff.");
	}
}

static StepDef *
ParseSteps(Jsonb *steps, int *nsteps, Oid definer)
{
	StepDef    *defs;
	int			n;

	if (!JB_ROOT_IS_ARRAY(steps) || JB_ROOT_IS_SCALAR(steps) ||
		JB_ROOT_COUNT(steps) < 1 || JB_ROOT_COUNT(steps) > MAX_STEPS)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("apicore: steps must be a JSON array of 1 to %d step objects", MAX_STEPS),
				 errhint("Pass e.g. '[{\"name\": \"charge_card\", \"compensate\": \"refund_card\"}]'.")));
	n = JB_ROOT_COUNT(steps);
	defs = palloc0(sizeof(StepDef) * n);
	for (int i = 0; i < n; i++)
	{
		JsonbValue *v = getIthJsonbValueFromContainer(&steps->root, i);
		JsonbContainer *step;

		if (v->type != jbvBinary || !JsonContainerIsObject(v->val.binary.data))
			StepError(i, "name", "is missing: the step is not an object",
					  "Every step is an object with a unique, non-empty \"name\".");
		step = v->val.binary.data;
		CheckStepKeys(step, i);
		defs[i].name = StepString(step, i, "name", true);
		for (int j = 0; j < i; j++)
			if (strcmp(defs[j].name, defs[i].name) == 0)
				StepError(i, "name", psprintf("\"%s\" is used by steps[%d] too", defs[i].name, j),
						  "Step names must be unique within a definition.");
		defs[i].compensate = StepString(step, i, "compensate", false);
		defs[i].function = StepFunction(step, i, "function", definer);
		defs[i].compensate_function = StepFunction(step, i, "compensate_function", definer);
		if (defs[i].compensate && OidIsValid(defs[i].compensate_function))
			StepError(i, "compensate", "and compensate_function are both set",
					  "Name a worker action in compensate, or a local function in compensate_function, not both.");
		defs[i].timeout = StepInterval(step, i, "timeout", DEFAULT_TIMEOUT);
		defs[i].max_attempts = StepMaxAttempts(step, i);
		defs[i].backoff = StepInterval(step, i, "backoff", DEFAULT_BACKOFF);
		defs[i].max_backoff = StepInterval(step, i, "max_backoff", DEFAULT_MAX_BACKOFF);
	}
	*nsteps = n;
	return defs;
}

static void
InsertStepDef(const char *name, int version, int position, StepDef *def)
{
	Datum		values[11] = {CStringGetTextDatum(name), Int32GetDatum(version),
		Int32GetDatum(position), CStringGetTextDatum(def->name),
		def->compensate ? CStringGetTextDatum(def->compensate) : (Datum) 0,
		ObjectIdGetDatum(def->function), ObjectIdGetDatum(def->compensate_function),
		IntervalPGetDatum(def->timeout), Int32GetDatum(def->max_attempts),
	IntervalPGetDatum(def->backoff), IntervalPGetDatum(def->max_backoff)};
	char		nulls[11] = "           ";

	nulls[4] = def->compensate ? ' ' : 'n';
	nulls[5] = OidIsValid(def->function) ? ' ' : 'n';
	nulls[6] = OidIsValid(def->compensate_function) ? ' ' : 'n';
	SagaExec(PLAN_DEF_STEP_INSERT, values, nulls, false, 0);
}

/*
 * A new version of an existing definition must come from a role acting for
 * the one that defined the latest (its local steps run as that role).
 */
static void
RequireSameOwner(const char *name, Oid latest_definer, Oid caller)
{
	char	   *who;

	if (has_privs_of_role(caller, latest_definer))
		return;
	who = GetUserNameFromId(latest_definer, true);
	ereport(ERROR,
			(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
			 errmsg("apicore: saga definition \"%s\" was defined by role %s", name,
					who ? who : psprintf("with OID %u, since dropped", latest_definer)),
			 errhint("Define a new version as that role (SET ROLE), or choose another name.")));
}

Datum
apicore_saga_define(PG_FUNCTION_ARGS)
{
	char	   *name = NameArg(fcinfo, 0, "name", "Name the saga definition, e.g. 'checkout'.");
	Jsonb	   *steps;
	StepDef    *defs;
	int			nsteps;
	int			version = 1;
	Datum		values[4];
	Oid			caller = GetUserId();
	ApicoreIdentity id;
	bool		has_definer;

	RequireArg(fcinfo, 1, "steps", "Pass a JSON array of step objects.");
	steps = PG_GETARG_JSONB_P(1);
	/* function names are resolved as the caller, who becomes the definer */
	defs = ParseSteps(steps, &nsteps, caller);

	(void) SagaEnter(&id);
	SPI_connect();
	values[0] = CStringGetTextDatum(name);
	values[1] = JsonbPGetDatum(steps);
	SagaExec(PLAN_DEF_LOCK, values, NULL, false, 0);
	/*
	 * Definitions are the one thing the new library writes into 0.1.0's
	 * tables before ALTER EXTENSION UPDATE (which then records a definer).
	 */
	has_definer = get_attnum(get_relname_relid("saga_definition", get_namespace_oid("apicore", false)),
							 "definer") != InvalidAttrNumber;
	SagaExec(has_definer ? PLAN_DEF_LATEST : PLAN_DEF_LATEST_010, values, NULL, false, 1);
	if (SPI_processed > 0)
	{
		Oid			latest_definer = has_definer ? DatumGetObjectId(ResultValue(0, 3, NULL)) : caller;

		version = DatumGetInt32(ResultValue(0, 1, NULL));
		RequireSameOwner(name, latest_definer, caller);
		/* the same steps again (a deploy re-running its setup): keep that version */
		if (DatumGetBool(ResultValue(0, 2, NULL)) && latest_definer == caller)
		{
			SPI_finish();
			ApicoreRestore(&id);
			PG_RETURN_INT32(version);
		}
		version++;
	}
	values[1] = Int32GetDatum(version);
	values[2] = JsonbPGetDatum(steps);
	values[3] = ObjectIdGetDatum(caller);
	SagaExec(has_definer ? PLAN_DEF_INSERT : PLAN_DEF_INSERT_010, values, NULL, false, 0);
	for (int i = 0; i < nsteps; i++)
		InsertStepDef(name, version, i + 1, &defs[i]);
	SPI_finish();
	ApicoreRestore(&id);
	PG_RETURN_INT32(version);
}

/* ---------- saga_start ---------- */

static int
CurrentVersion(const char *definition)
{
	Datum		values[2] = {CStringGetTextDatum(definition), JsonbPGetDatum(NULL)};
	char		nulls[2] = " n";

	SagaExec(PLAN_DEF_LATEST, values, nulls, false, 1);
	if (SPI_processed == 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("apicore: saga definition \"%s\" does not exist", definition),
				 errhint("Define it first with apicore.saga_define('%s', steps).", definition)));
	return DatumGetInt32(ResultValue(0, 1, NULL));
}

/*
 * A time-ordered UUID (version 7, RFC 9562): 48 bits of Unix milliseconds,
 * then random bits.  Sagas started close in time sit close together in the
 * indexes keyed by saga id, so each step writes fewer distinct pages.
 */
static void
NewSagaId(pg_uuid_t *uuid)
{
	TimestampTz now = GetCurrentTimestamp();
	uint64		unix_ms = (uint64) (now / 1000) +
		(uint64) (POSTGRES_EPOCH_JDATE - UNIX_EPOCH_JDATE) * SECS_PER_DAY * 1000;

	randombytes_buf(uuid->data, UUID_LEN);
	for (int i = 0; i < 6; i++)
		uuid->data[i] = (unix_ms >> (8 * (5 - i))) & 0xff;
	uuid->data[6] = (uuid->data[6] & 0x0f) | 0x70;	/* version 7 */
	uuid->data[8] = (uuid->data[8] & 0x3f) | 0x80;	/* RFC 9562 variant */
}

static void
CheckPositiveInterval(Interval *span, const char *name, const char *hint)
{
	if (!SpanUsable(span))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("apicore: %s must be a positive interval of at most %s", name, MAX_SPAN_TEXT),
				 errhint("%s", hint)));
}

Datum
apicore_saga_start(PG_FUNCTION_ARGS)
{
	char	   *definition = NameArg(fcinfo, 0, "definition", "Name a definition created with apicore.saga_define.");
	pg_uuid_t  *id = palloc(sizeof(pg_uuid_t));
	Datum		values[5];
	char		nulls[5] = "     ";
	SagaRow    *saga;
	ApicoreIdentity identity;
	Oid			caller;

	RequireArg(fcinfo, 1, "payload", "Pass the saga's input as jsonb, e.g. '{}'.");
	if (PG_ARGISNULL(2))
		NewSagaId(id);
	else
		*id = *PG_GETARG_UUID_P(2);
	if (!PG_ARGISNULL(3))
		CheckPositiveInterval(PG_GETARG_INTERVAL_P(3), "deadline",
							  "Pass how long the saga may run, e.g. '15 minutes', or NULL for no deadline.");

	caller = SagaEnter(&identity);
	SPI_connect();
	values[0] = UUIDPGetDatum(id);
	values[1] = CStringGetTextDatum(definition);
	values[2] = Int32GetDatum(CurrentVersion(definition));
	values[3] = PG_GETARG_DATUM(1);
	values[4] = PG_ARGISNULL(3) ? (Datum) 0 : PG_GETARG_DATUM(3);
	nulls[4] = PG_ARGISNULL(3) ? 'n' : ' ';
	SagaExec(PLAN_SAGA_INSERT, values, nulls, false, 1);
	if (SPI_processed == 0)
	{
		/* same saga_id again: the same saga, unless it is a different request */
		Datum		existing[3] = {values[0], values[1], values[3]};

		SagaExec(PLAN_SAGA_EXISTING, existing, NULL, false, 1);
		if (!DatumGetBool(ResultValue(0, 1, NULL)))
			ereport(ERROR,
					(errcode(ERRCODE_UNIQUE_VIOLATION),
					 errmsg("apicore: saga_id %s was already started with a different definition or payload",
							DatumGetCString(DirectFunctionCall1(uuid_out, UUIDPGetDatum(id)))),
					 errhint("Use a new saga_id for a new saga; repeat a start with the same definition and payload.")));
		SPI_finish();
		ApicoreRestore(&identity);
		PG_RETURN_UUID_P(id);
	}
	saga = LockSaga(id);
	LogTransition(id, NULL, NULL, 0, NULL, "running", ActorName(caller), NULL);
	MakeRunnable(saga, 1, "forward", ActorName(caller));
	SPI_finish();
	ApicoreRestore(&identity);
	PG_RETURN_UUID_P(id);
}

/* ---------- saga_claim ---------- */

/*
 * Where this backend's next claim starts its scan of saga_step_runnable.
 * A claim takes the oldest runnable steps it can lock, so every index entry
 * before the last one it took was a dead row version or locked by another
 * claim.  The index keeps dead entries until VACUUM, and under load walking
 * them was the largest single cost of a claim.  Entries before the resume
 * point can become claimable again (a claim that rolled back, a step made
 * runnable by a transaction that began earlier), so a claim scans from the
 * start when the last such scan is CLAIM_RESCAN_MS old, when its definitions
 * filter differs from the last claim's, and before it reports no work.
 */
#ifndef CLAIM_RESCAN_MS
#define CLAIM_RESCAN_MS 1000
#endif

static TimestampTz claim_resume_from = DT_NOBEGIN;
static TimestampTz claim_full_scan_at = DT_NOBEGIN;
static ArrayType *claim_resume_filter = NULL;	/* NULL: no filter */

/* The run_after to scan from: DT_NOBEGIN for a scan from the start. */
static TimestampTz
ClaimScanStart(ArrayType *filter)
{
	TimestampTz now = GetCurrentTransactionStartTimestamp();
	bool		same_filter = (filter == NULL && claim_resume_filter == NULL) ||
		(filter != NULL && claim_resume_filter != NULL &&
		 VARSIZE(filter) == VARSIZE(claim_resume_filter) &&
		 memcmp(filter, claim_resume_filter, VARSIZE(filter)) == 0);

	if (!same_filter || TimestampDifferenceExceeds(claim_full_scan_at, now, CLAIM_RESCAN_MS))
		return DT_NOBEGIN;
	return claim_resume_from;
}

/* After a claim that scanned from `from` and last took a step at `last`. */
static void
ClaimScanDone(ArrayType *filter, TimestampTz from, TimestampTz last)
{
	if (from == DT_NOBEGIN)
	{
		claim_full_scan_at = GetCurrentTransactionStartTimestamp();
		if (claim_resume_filter != NULL)
			pfree(claim_resume_filter);
		claim_resume_filter = NULL;
		if (filter != NULL)
		{
			claim_resume_filter = MemoryContextAlloc(TopMemoryContext, VARSIZE(filter));
			memcpy(claim_resume_filter, filter, VARSIZE(filter));
		}
	}
	claim_resume_from = last;
}

/*
 * Claim up to max_steps steps scanning from `from` into `tupstore`; the
 * number claimed, and the run_after of the last in *last.
 */
static uint64
ClaimFrom(const char *worker, ArrayType *filter, int max_steps, TimestampTz from,
		  Tuplestorestate *tupstore, TupleDesc tupdesc, TimestampTz *last)
{
	Datum		one[3];
	Datum		many[4];
	char		nulls[4] = {' ', filter == NULL ? 'n' : ' ', ' ', ' '};
	uint64		claimed;

	if (max_steps == 1)
	{
		int			direct = ClaimOneDirectly(worker, filter, from, tupstore, tupdesc, last);

		if (direct >= 0)
		{
			elog(DEBUG1, "apicore: saga claim ran without the executor");
			return direct;
		}
	}
	one[0] = many[0] = CStringGetTextDatum(worker);
	one[1] = many[1] = PointerGetDatum(filter);
	one[2] = many[3] = TimestampTzGetDatum(from);
	many[2] = Int32GetDatum(max_steps);
	SagaExec(max_steps == 1 ? PLAN_CLAIM : PLAN_CLAIM_MANY, max_steps == 1 ? one : many, nulls, false, 0);
	claimed = SPI_processed;
	for (uint64 i = 0; i < claimed; i++)
	{
		Datum		row[CLAIM_RESULT_COLUMNS];
		bool		row_nulls[CLAIM_RESULT_COLUMNS];

		for (int c = 0; c < CLAIM_RESULT_COLUMNS; c++)
			row[c] = ResultValue((int) i, c + 1, &row_nulls[c]);
		tuplestore_putvalues(tupstore, tupdesc, row, row_nulls);
	}
	if (claimed > 0)
		*last = DatumGetTimestampTz(ResultValue((int) claimed - 1, CLAIM_RESULT_COLUMNS + 1, NULL));
	return claimed;
}

/*
 * Claim up to max_steps runnable worker steps into `tupstore`.  Local steps
 * are never handed out: apicore runs them itself (Schedule, and the
 * saga_run_local_steps task for retries).
 */
static void
ClaimSteps(const char *worker, ArrayType *filter, int max_steps,
		   Tuplestorestate *tupstore, TupleDesc tupdesc)
{
	TimestampTz from = ClaimScanStart(filter);
	TimestampTz last;
	uint64		claimed = ClaimFrom(worker, filter, max_steps, from, tupstore, tupdesc, &last);

	if (claimed == 0 && from != DT_NOBEGIN)
	{
		from = DT_NOBEGIN;
		claimed = ClaimFrom(worker, filter, max_steps, from, tupstore, tupdesc, &last);
	}
	if (claimed > 0)
		ClaimScanDone(filter, from, last);
}

Datum
apicore_saga_claim(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	char	   *worker = NameArg(fcinfo, 0, "worker", "Name the worker, e.g. its host name and process id.");
	int			max_steps;
	ApicoreIdentity id;

	RequireArg(fcinfo, 2, "max_steps", "Pass how many steps to claim at most, e.g. 1.");
	max_steps = PG_GETARG_INT32(2);
	if (max_steps < 1 || max_steps > MAX_MAX_STEPS)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("apicore: max_steps must be 1 to %d, got %d", MAX_MAX_STEPS, max_steps),
				 errhint("Claim as many steps as the worker can run before their leases expire.")));
	InitMaterializedSRF(fcinfo, 0);
	(void) SagaEnter(&id);
	SPI_connect();
	ClaimSteps(worker, PG_ARGISNULL(1) ? NULL : PG_GETARG_ARRAYTYPE_P(1),
			   max_steps, rsinfo->setResult, rsinfo->setDesc);
	SPI_finish();
	ApicoreRestore(&id);
	return (Datum) 0;
}

/* ---------- cancel, operator retry and resolve ---------- */

/* Stop the forward run; compensate once no step of the saga is in flight. */
static void
CancelSaga(SagaRow *saga, const char *reason, const char *actor)
{
	Datum		reason_values[2] = {UUIDPGetDatum(&saga->id), CStringGetTextDatum(reason)};
	Datum		stop[2] = {UUIDPGetDatum(&saga->id), BoolGetDatum(false)};

	if (saga->cancelling || strcmp(saga->state, "running") != 0)
		return;
	SagaExec(PLAN_SAGA_CANCEL_REASON, reason_values, NULL, false, 0);
	saga->cancelling = true;
	SagaExec(PLAN_STEP_STOP, stop, NULL, false, 1);
	if (SPI_processed > 0)
	{
		int			position = DatumGetInt32(ResultValue(0, 1, NULL));

		LogTransition(&saga->id, ResultText(0, 3), ResultText(0, 2),
					  DatumGetInt32(ResultValue(0, 4, NULL)), "runnable", "cancelled", actor, reason);
		CompensateBelow(saga, position, actor);
	}
	else						/* a claimed step is in flight: its report moves the saga on */
		SetSagaState(saga, "compensating", actor, reason);
}

Datum
apicore_saga_cancel(PG_FUNCTION_ARGS)
{
	SagaRow    *saga;
	char	   *reason;
	ApicoreIdentity id;
	Oid			caller;

	RequireArg(fcinfo, 0, "saga_id", "Pass the id returned by apicore.saga_start.");
	RequireArg(fcinfo, 1, "reason", "Say why the saga is cancelled; it is kept in the saga log.");
	reason = text_to_cstring(PG_GETARG_TEXT_PP(1));
	caller = SagaEnter(&id);
	SPI_connect();
	saga = LockSagaOrError(PG_GETARG_UUID_P(0));
	CancelSaga(saga, reason, ActorName(caller));
	PG_RETURN_DATUM(FinishWithState(saga, &id));
}

static void
RequireUnfinished(SagaRow *saga, const char *what)
{
	if (SagaIsFinished(saga))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("apicore: saga is already %s; %s changes nothing", saga->state, what),
				 errhint("Only a running, compensating or failed saga can be retried or resolved.")));
}

Datum
apicore_saga_retry(PG_FUNCTION_ARGS)
{
	SagaRow    *saga;
	char	   *actor = NameArg(fcinfo, 1, "actor", "Name the operator, e.g. 'alice@example.com'.");
	char	   *reason;
	Datum		values[3];
	char	   *step_state;
	char	   *step;
	ApicoreIdentity id;

	RequireArg(fcinfo, 0, "saga_id", "Pass the id of a saga from apicore.saga_dead_letter.");
	RequireArg(fcinfo, 2, "reason", "Say why the step is retried; it is kept in the saga log.");
	reason = text_to_cstring(PG_GETARG_TEXT_PP(2));
	(void) SagaEnter(&id);
	SPI_connect();
	saga = LockSagaOrError(PG_GETARG_UUID_P(0));
	RequireUnfinished(saga, "saga_retry");
	values[0] = UUIDPGetDatum(&saga->id);
	values[1] = Int32GetDatum(saga->position);
	values[2] = CStringGetTextDatum(saga->direction);
	SagaExec(PLAN_STEP_CURRENT, values, NULL, false, 1);
	step_state = SPI_processed > 0 ? ResultText(0, 1) : "missing";
	step = SPI_processed > 0 ? ResultText(0, 2) : "?";
	if (strcmp(step_state, "claimed") == 0 || strcmp(step_state, "succeeded") == 0 ||
		strcmp(step_state, "missing") == 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("apicore: step \"%s\" is %s%s%s; there is nothing to retry", step, step_state,
						strcmp(step_state, "claimed") == 0 ? " by worker " : "",
						strcmp(step_state, "claimed") == 0 ? ResultText(0, 4) : ""),
				 errhint("A claimed step is retried by the worker or, after its lease expires, by maintenance.")));
	LogTransition(&saga->id, step, saga->direction, 0, step_state, "runnable", actor, reason);
	SetSagaState(saga, strcmp(saga->direction, "forward") == 0 ? "running" : "compensating",
				 actor, reason);
	Schedule(saga, saga->position, saga->direction, actor, true);
	PG_RETURN_DATUM(FinishWithState(saga, &id));
}

Datum
apicore_saga_resolve(PG_FUNCTION_ARGS)
{
	SagaRow    *saga;
	char	   *outcome;
	char	   *actor = NameArg(fcinfo, 2, "actor", "Name the operator, e.g. 'alice@example.com'.");
	char	   *reason;
	Datum		stop[2];
	ApicoreIdentity id;

	RequireArg(fcinfo, 0, "saga_id", "Pass the id of a saga from apicore.saga_dead_letter.");
	RequireArg(fcinfo, 1, "outcome", "Pass 'completed', 'compensated' or 'failed'.");
	RequireArg(fcinfo, 3, "reason", "Say why the saga is resolved by hand; it is kept in the saga log.");
	outcome = text_to_cstring(PG_GETARG_TEXT_PP(1));
	reason = text_to_cstring(PG_GETARG_TEXT_PP(3));
	if (strcmp(outcome, "completed") != 0 && strcmp(outcome, "compensated") != 0 &&
		strcmp(outcome, "failed") != 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("apicore: outcome must be 'completed', 'compensated' or 'failed', got \"%s\"", outcome),
				 errhint("'completed': every step is done; 'compensated': everything was undone; 'failed': park it in the dead letter.")));
	(void) SagaEnter(&id);
	SPI_connect();
	/* not checked: resolving is how an operator ends a saga whose row was damaged */
	saga = LockSagaOrErrorRow(PG_GETARG_UUID_P(0), false);
	RequireUnfinished(saga, "saga_resolve");
	stop[0] = UUIDPGetDatum(&saga->id);
	stop[1] = BoolGetDatum(true);
	SagaExec(PLAN_STEP_STOP, stop, NULL, false, 0);
	for (uint64 i = 0; i < SPI_processed; i++)
		LogTransition(&saga->id, ResultText(i, 3), ResultText(i, 2),
					  DatumGetInt32(ResultValue(i, 4, NULL)), NULL, "cancelled", actor, reason);
	SetSagaState(saga, outcome, actor, reason);
	PG_RETURN_DATUM(FinishWithState(saga, &id));
}

/* ---------- saga_get ---------- */

Datum
apicore_saga_get(PG_FUNCTION_ARGS)
{
	Datum		values[1];
	Datum		result = (Datum) 0;
	bool		isnull = true;
	ApicoreIdentity id;

	RequireArg(fcinfo, 0, "saga_id", "Pass the id returned by apicore.saga_start.");
	values[0] = PG_GETARG_DATUM(0);
	(void) SagaEnter(&id);
	SPI_connect();
	SagaExec(PLAN_GET, values, NULL, true, 1);
	if (SPI_processed > 0)
	{
		result = ResultValue(0, 1, &isnull);
		result = SPI_datumTransfer(result, false, -1);
	}
	SPI_finish();
	ApicoreRestore(&id);
	if (isnull)
		PG_RETURN_NULL();
	PG_RETURN_DATUM(result);
}

/* ---------- maintenance tasks ---------- */

/*
 * Each task works as apicore's owner, whoever runs it (the worker connects
 * as the bootstrap superuser), and moves each saga in a subtransaction of
 * its own: a saga whose rows cannot be handled (changed by hand) is skipped
 * with a WARNING, instead of failing the round for every other saga.
 */
typedef struct SagaTask
{
	pg_uuid_t  *id;
	int			(*work) (pg_uuid_t *id);
	int			done;
} SagaTask;

static void
SagaTaskBody(void *arg)
{
	SagaTask   *task = arg;

	task->done = task->work(task->id);
}

/* work(id) in a subtransaction: what it counted, or 0 (and *failed + 1) on error. */
static int
ForOneSaga(pg_uuid_t *id, int (*work) (pg_uuid_t *id), int *failed)
{
	SagaTask	task = {id, work, 0};
	ErrorData  *error = ApicoreTrySubtransaction(SagaTaskBody, &task);

	if (error == NULL)
		return task.done;
	ereport(WARNING,
			(errcode(error->sqlerrcode),
			 errmsg("apicore: saga maintenance skipped saga %s: %s", SagaIdText(id), error->message),
			 error->hint ? errhint("%s", error->hint) : 0));
	(*failed)++;
	return 0;
}

/* A lost lease is a failed attempt: retried (with backoff) or given up. */
static int
ReclaimSaga(pg_uuid_t *id)
{
	SagaRow    *saga = LockSaga(id);
	Datum		values[1] = {UUIDPGetDatum(id)};
	StepRun    *run;

	if (saga == NULL)
		return 0;
	SagaExec(PLAN_STEP_EXPIRED, values, NULL, false, 1);
	if (SPI_processed == 0)
		return 0;				/* reported or heartbeated meanwhile */
	run = StepRunFromResult();
	SagaStepFailed(saga, run, psprintf("lease of worker %s expired", run->worker), true, APICORE_ACTOR);
	return 1;
}

static int
FireDeadline(pg_uuid_t *id)
{
	SagaRow    *saga = LockSaga(id);

	if (saga == NULL)
		return 0;
	CancelSaga(saga, "deadline exceeded", APICORE_ACTOR);
	return 1;
}

/* Ids from the last SPI result's first column, copied. */
static List *
ResultIds(void)
{
	List	   *ids = NIL;

	for (uint64 i = 0; i < SPI_processed; i++)
	{
		pg_uuid_t  *id = palloc(sizeof(pg_uuid_t));

		*id = *DatumGetUUIDP(ResultValue(i, 1, NULL));
		ids = lappend(ids, id);
	}
	return ids;
}

/* The task's report; SPI finished and the caller's identity back. */
static Datum
TaskResult(ApicoreIdentity *id, const char *detail, int failed)
{
	Datum		result;

	if (failed > 0)
		detail = psprintf("%s, %d skipped (see the server log)", detail, failed);
	result = SPI_datumTransfer(CStringGetTextDatum(detail), false, -1);
	SPI_finish();
	ApicoreRestore(id);
	return result;
}

/* Lock the sagas of `plan` (LIMIT the batch) and work on each. */
static int
ForEachSaga(SagaPlanId plan, int (*work) (pg_uuid_t *id), int *failed)
{
	Datum		values[1] = {Int32GetDatum(saga_maintenance_batch)};
	List	   *ids;
	ListCell   *lc;
	int			done = 0;

	SagaExec(plan, values, NULL, false, 0);
	ids = ResultIds();
	foreach(lc, ids)
		done += ForOneSaga(lfirst(lc), work, failed);
	return done;
}

/* A task that works on each saga `plan` returns: "<count> <what>". */
static Datum
RunSagaTask(SagaPlanId plan, int (*work) (pg_uuid_t *id), const char *what)
{
	ApicoreIdentity id;
	int			failed = 0;
	int			done;

	(void) SagaEnter(&id);
	SPI_connect();
	done = ForEachSaga(plan, work, &failed);
	return TaskResult(&id, psprintf("%d %s", done, what), failed);
}

Datum
apicore_saga_reclaim_leases(PG_FUNCTION_ARGS)
{
	return RunSagaTask(PLAN_EXPIRED_SAGAS, ReclaimSaga, "expired leases reclaimed");
}

Datum
apicore_saga_fire_deadlines(PG_FUNCTION_ARGS)
{
	return RunSagaTask(PLAN_DEADLINE_SAGAS, FireDeadline, "sagas past their deadline cancelled");
}

/* The due local step of the saga being worked on (ForOneSaga passes only the id). */
static int	due_position;
static char *due_direction;

static int
RunDueLocalStep(pg_uuid_t *id)
{
	SagaRow    *saga = LockSaga(id);

	if (saga == NULL)
		return 0;
	ClaimAndRunLocal(saga, due_position, due_direction);
	return 1;
}

Datum
apicore_saga_run_local_steps(PG_FUNCTION_ARGS)
{
	Datum		values[1] = {Int32GetDatum(saga_maintenance_batch)};
	ApicoreIdentity id;
	SPITupleTable *due;
	uint64		ndue;
	int			failed = 0;
	int			ran = 0;

	(void) SagaEnter(&id);
	SPI_connect();
	/* saga row first, as everywhere: the step is claimed under its lock */
	SagaExec(PLAN_DUE_LOCAL_STEPS, values, NULL, false, 0);
	due = SPI_tuptable;
	ndue = SPI_processed;
	for (uint64 i = 0; i < ndue; i++)
	{
		pg_uuid_t	saga;

		SPI_tuptable = due;		/* running a step replaced it */
		saga = *DatumGetUUIDP(ResultValue((int) i, 1, NULL));
		due_position = DatumGetInt32(ResultValue((int) i, 2, NULL));
		due_direction = ResultText((int) i, 3);
		ran += ForOneSaga(&saga, RunDueLocalStep, &failed);
	}
	return TaskResult(&id, psprintf("%d local steps run", ran), failed);
}

/*
 * Set only while retention deletes the log rows of the sagas it removed:
 * the one DELETE the append-only trigger lets through.
 */
static bool saga_retention_deleting = false;

Datum
apicore_saga_retention(PG_FUNCTION_ARGS)
{
	Datum		values[2] = {Int32GetDatum(saga_retention_s), Int32GetDatum(saga_maintenance_batch)};
	int			deleted;
	bool		isnull;
	ApicoreIdentity id;

	(void) SagaEnter(&id);
	SPI_connect();
	SagaExec(PLAN_RETENTION_SAGAS, values, NULL, false, 1);
	deleted = DatumGetInt32(ResultValue(0, 1, NULL));
	if (deleted > 0)
	{
		Datum		ids[1] = {ResultValue(0, 2, &isnull)};

		saga_retention_deleting = true;
		PG_TRY();
		{
			SagaExec(PLAN_RETENTION_LOG, ids, NULL, false, 0);
		}
		PG_FINALLY();
		{
			saga_retention_deleting = false;
		}
		PG_END_TRY();
	}
	return TaskResult(&id, psprintf("%d finished sagas deleted", deleted), 0);
}

/*
 * The audit log is append-only for every role, its owner included: UPDATE
 * and TRUNCATE are always refused, DELETE unless it is apicore's retention
 * removing the rows of the sagas it deleted.
 */
Datum
apicore_saga_transition_append_only(PG_FUNCTION_ARGS)
{
	TriggerData *trigger = (TriggerData *) fcinfo->context;
	const char *op;

	if (!CALLED_AS_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("apicore: _saga_transition_append_only() is a trigger function"),
				 errhint("It guards apicore.saga_transition; do not call it.")));
	if (TRIGGER_FIRED_BY_DELETE(trigger->tg_event) && saga_retention_deleting)
		return PointerGetDatum(trigger->tg_trigtuple);
	op = TRIGGER_FIRED_BY_UPDATE(trigger->tg_event) ? "UPDATE" :
		TRIGGER_FIRED_BY_DELETE(trigger->tg_event) ? "DELETE" : "TRUNCATE";
	ereport(ERROR,
			(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
			 errmsg("apicore.saga_log is append-only: %s is not allowed", op),
			 errhint("Audit rows leave only with their saga, through apicore.saga_retention.")));
	PG_RETURN_NULL();
}

/* ---------- settings ---------- */

void
SagaInit(void)
{
	DefineCustomIntVariable("apicore.saga_retention",
							"How long finished sagas (completed, compensated, cancelled) are kept.",
							"Maintenance then deletes the saga, its steps and its log rows; failed sagas are kept until resolved.",
							&saga_retention_s, 7 * 24 * 3600, 1, INT_MAX,
							PGC_SUSET, GUC_UNIT_S, NULL, NULL, NULL);
	DefineCustomIntVariable("apicore.saga_maintenance_batch",
							"Most sagas each saga maintenance task handles in one round.",
							"Keeps every maintenance transaction short.",
							&saga_maintenance_batch, 1000, 1, 100000,
							PGC_SUSET, 0, NULL, NULL, NULL);
	DefineCustomBoolVariable("apicore.saga_notify",
							 "Send NOTIFY apicore_saga when a saga step becomes runnable.",
							 "Off: workers find work by polling saga_claim; commits of step reports no longer queue behind each other.",
							 &saga_notify, true, PGC_USERSET, 0, NULL, NULL, NULL);
	if (apicore_preloaded)
	{
		prev_process_utility = ProcessUtility_hook;
		ProcessUtility_hook = SagaProcessUtility;
	}
}
