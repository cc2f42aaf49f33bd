/*
 * worker.c — the maintenance background worker and apicore.run_maintenance().
 *
 * Shape (pg_partman's background worker): one static launcher worker reads
 * apicore.database and, every apicore.maintenance_interval, starts one
 * short-lived dynamic worker per database.  That worker connects, runs every
 * task listed in apicore.maintenance_task, each in its own short transaction
 * so that one failing task neither blocks nor undoes the others, and exits.
 * Between rounds nothing is connected to the database, so DROP DATABASE and
 * CREATE DATABASE .. TEMPLATE work without FORCE, and a round that is still
 * running is never started twice.
 *
 * Capabilities add tasks by inserting a row in their install fragment; this
 * file never needs to change for a new task.
 *
 * The worker connects as the bootstrap superuser, but runs nothing as it:
 * the task list is read as the task table's owner, and each task, after its
 * function is checked, as the function's owner (ApicoreBecome: security-
 * restricted, search_path = pg_catalog, pg_temp).  run_maintenance() does
 * the same whoever calls it.  Only apicore's owner can write the task table.
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/namespace.h"
#include "catalog/pg_proc.h"
#include "catalog/pg_type.h"
#include "commands/dbcommands.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "storage/spin.h"
#include "tcop/tcopprot.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/regproc.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"
#include "utils/varlena.h"

#include "apicore.h"

#define MAX_DATABASES 32
#define ERROR_TEXT_LEN 256

/* Settings */
static char *apicore_database = NULL;
static int	maintenance_interval_ms = 60000;

/* What a database worker reports about itself, for apicore.maintenance_workers. */
typedef struct WorkerSlot
{
	char		dbname[NAMEDATALEN];	/* empty = free slot */
	int			pid;			/* 0 between rounds */
	bool		extension_missing;	/* last round found no extension */
	int64		rounds;
	int64		tasks_failed;
	TimestampTz started_at;
	TimestampTz last_round_at;
	char		last_error[ERROR_TEXT_LEN];
} WorkerSlot;

typedef struct WorkerShared
{
	slock_t		mutex;
	WorkerSlot	slots[MAX_DATABASES];
} WorkerShared;

static WorkerShared *worker_shared = NULL;

/* One registered maintenance task, as read from apicore.maintenance_task. */
typedef struct MaintenanceTask
{
	char	   *name;
	Oid			function;
} MaintenanceTask;

/* The launcher's view of one database's rounds. */
typedef struct DatabaseWorker
{
	char		dbname[NAMEDATALEN];
	BackgroundWorkerHandle *handle; /* the round in progress, or NULL */
	TimestampTz last_start;		/* next round is due one interval later */
	int64		rounds_at_start;	/* to tell a finished round from a failed one */
	bool		missing;		/* said that the database does not exist */
} DatabaseWorker;

PGDLLEXPORT void ApicoreLauncherMain(Datum arg);
PGDLLEXPORT void ApicoreDatabaseWorkerMain(Datum arg);

PG_FUNCTION_INFO_V1(apicore_run_maintenance);
PG_FUNCTION_INFO_V1(apicore_maintenance_workers);

/* ---------- settings ---------- */

static bool
CheckDatabaseList(char **newval, void **extra, GucSource source)
{
	char	   *copy = pstrdup(*newval);
	List	   *names = NIL;
	bool		ok = SplitIdentifierString(copy, ',', &names);

	if (ok && list_length(names) > MAX_DATABASES)
	{
		GUC_check_errdetail("apicore.database names %d databases; at most %d are supported.",
							list_length(names), MAX_DATABASES);
		ok = false;
	}
	else if (!ok)
		GUC_check_errdetail("apicore.database must be a comma-separated list of database names, e.g. 'postgres, shop'.");
	list_free(names);
	pfree(copy);
	return ok;
}

void
WorkerInit(void)
{
	DefineCustomStringVariable("apicore.database",
							   "Databases, comma-separated, in which the apicore maintenance worker runs.",
							   "Each named database gets one worker; databases without the extension are checked again every interval.",
							   &apicore_database, "postgres", PGC_SIGHUP, 0,
							   CheckDatabaseList, NULL, NULL);
	DefineCustomIntVariable("apicore.maintenance_interval",
							"Time between two maintenance rounds of the apicore worker.",
							"Accepts 100ms to 1d.",
							&maintenance_interval_ms, 60000, 100, 86400000,
							PGC_SIGHUP, GUC_UNIT_MS, NULL, NULL, NULL);

	if (!process_shared_preload_libraries_in_progress)
		return;

	{
		BackgroundWorker worker;

		memset(&worker, 0, sizeof(worker));
		/* connected to no database, like the logical replication launcher: visible in pg_stat_activity */
		worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
		worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
		worker.bgw_restart_time = 5;
		snprintf(worker.bgw_library_name, BGW_MAXLEN, "apicore");
		snprintf(worker.bgw_function_name, BGW_MAXLEN, "ApicoreLauncherMain");
		snprintf(worker.bgw_name, BGW_MAXLEN, "apicore launcher");
		snprintf(worker.bgw_type, BGW_MAXLEN, "apicore launcher");
		RegisterBackgroundWorker(&worker);
	}
}

void
WorkerShmemRequest(void)
{
	RequestAddinShmemSpace(MAXALIGN(sizeof(WorkerShared)));
}

void
WorkerShmemStartup(void)
{
	bool		found;

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	worker_shared = ShmemInitStruct("apicore maintenance workers", sizeof(WorkerShared), &found);
	if (!found)
	{
		memset(worker_shared, 0, sizeof(WorkerShared));
		SpinLockInit(&worker_shared->mutex);
	}
	LWLockRelease(AddinShmemInitLock);
}

/* ---------- the task list, shared by the worker and run_maintenance() ---------- */

/*
 * Read apicore.maintenance_task as its owner (search_path = pg_catalog,
 * pg_temp: the worker's session would find objects in public); the list is
 * allocated in `cxt`.  A NULL function (a tampered row) is kept as
 * InvalidOid and refused when its turn comes.
 */
static List *
MaintenanceTaskList(MemoryContext cxt)
{
	List	   *tasks = NIL;
	ApicoreIdentity id;

	ApicoreBecome(&id, ApicoreRelationOwner(ApicoreTableOid("maintenance_task")), 0);
	SPI_connect();
	if (SPI_execute("SELECT t.task, t.function::pg_catalog.oid FROM apicore.maintenance_task t "
					"ORDER BY t.run_order, t.task", true, 0) != SPI_OK_SELECT)
		elog(ERROR, "apicore: could not read apicore.maintenance_task");

	for (uint64 i = 0; i < SPI_processed; i++)
	{
		HeapTuple	row = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;
		char	   *name = SPI_getvalue(row, desc, 1);
		MemoryContext old = MemoryContextSwitchTo(cxt);
		MaintenanceTask *task = palloc(sizeof(MaintenanceTask));

		task->name = pstrdup(name ? name : "(unnamed)");
		task->function = DatumGetObjectId(SPI_getbinval(row, desc, 2, &isnull));
		if (isnull)
			task->function = InvalidOid;
		tasks = lappend(tasks, task);
		MemoryContextSwitchTo(old);
	}
	SPI_finish();
	ApicoreRestore(&id);
	return tasks;
}

/*
 * Check the task's function before every call, since a row names it by OID
 * (regproc), which outlives the function and can be edited: it must exist,
 * be a plain function with no arguments returning one text.  Returns the role
 * to run it as, its owner; a superuser's function only when apicore's owner
 * (who alone writes the table) is a superuser too.
 */
static Oid
TaskFunctionOwner(MaintenanceTask *task)
{
	HeapTuple	tup;
	Form_pg_proc proc;
	bool		fits;
	Oid			owner;

	tup = OidIsValid(task->function) ?
		SearchSysCache1(PROCOID, ObjectIdGetDatum(task->function)) : NULL;
	if (!HeapTupleIsValid(tup))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_FUNCTION),
				 errmsg("apicore: maintenance task \"%s\" names function %u, which does not exist",
						task->name, task->function),
				 errhint("As apicore's owner, point the row of apicore.maintenance_task at a function, or delete it.")));
	proc = (Form_pg_proc) GETSTRUCT(tup);
	fits = proc->prokind == PROKIND_FUNCTION && proc->pronargs == 0 &&
		proc->prorettype == TEXTOID && !proc->proretset;
	owner = proc->proowner;
	ReleaseSysCache(tup);
	if (!fits)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_FUNCTION_DEFINITION),
				 errmsg("apicore: maintenance task \"%s\" names %s, which is not a function without arguments returning text",
						task->name, format_procedure(task->function)),
				 errhint("A task function is declared as CREATE FUNCTION f() RETURNS text.")));
	if (superuser_arg(owner) && !superuser_arg(ApicoreOwner()))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("apicore: maintenance task \"%s\" names %s, owned by a superuser",
						task->name, format_procedure(task->function)),
				 errhint("apicore's owner is not a superuser: a task runs as its function's owner, so use a function of an ordinary role.")));
	return owner;
}

/*
 * Call one task's function as the function's owner, never as the worker's
 * bootstrap superuser: security-restricted, search_path = pg_catalog, pg_temp
 * (a task names what it uses or sets its own search_path).  Its text result
 * is the detail reported.  An error unwinds the switch with the
 * (sub)transaction the caller runs the task in.
 */
static char *
CallMaintenanceTask(MaintenanceTask *task)
{
	Oid			owner = TaskFunctionOwner(task);
	ApicoreIdentity id;
	FmgrInfo	flinfo;
	LOCAL_FCINFO(fcinfo, 0);
	Datum		result;
	char	   *detail;

	ApicoreBecome(&id, owner, 0);
	fmgr_info(task->function, &flinfo);
	InitFunctionCallInfoData(*fcinfo, &flinfo, 0, InvalidOid, NULL, NULL);
	result = FunctionCallInvoke(fcinfo);
	detail = fcinfo->isnull ? pstrdup("(the task returned NULL)") : TextDatumGetCString(result);
	ApicoreRestore(&id);
	return detail;
}

/* ---------- apicore.run_maintenance() ---------- */

/* A task call as the body of a subtransaction. */
typedef struct TaskCall
{
	MaintenanceTask *task;
	MemoryContext result_cxt;
	char	   *detail;
} TaskCall;

static void
CallTaskBody(void *arg)
{
	TaskCall   *call = arg;
	char	   *detail = CallMaintenanceTask(call->task);

	call->detail = MemoryContextStrdup(call->result_cxt, detail);
}

/*
 * Each task runs in a subtransaction: a failure is reported as its row's
 * detail (and a WARNING) and the other tasks still run and keep their work.
 */
static char *
RunTaskInSubtransaction(MaintenanceTask *task)
{
	TaskCall	call = {task, CurrentMemoryContext, NULL};
	ErrorData  *failure = ApicoreTrySubtransaction(CallTaskBody, &call);

	if (failure == NULL)
		return call.detail;
	ereport(WARNING,
			(errmsg("apicore: maintenance task %s failed: %s", task->name, failure->message)));
	return psprintf("failed: %s", failure->message);
}

Datum
apicore_run_maintenance(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	List	   *tasks;
	ListCell   *lc;

	/* every task but rate-limit housekeeping writes: say so once, not per task */
	if (RecoveryInProgress() || XactReadOnly)
		ereport(ERROR,
				(errcode(ERRCODE_READ_ONLY_SQL_TRANSACTION),
				 errmsg("apicore.run_maintenance() cannot run in a read-only transaction or on a standby"),
				 errhint("Run it on the primary, where the maintenance worker also runs it every apicore.maintenance_interval.")));
	InitMaterializedSRF(fcinfo, 0);
	tasks = MaintenanceTaskList(CurrentMemoryContext);
	foreach(lc, tasks)
	{
		MaintenanceTask *task = lfirst(lc);
		Datum		values[2];
		bool		nulls[2] = {false, false};

		values[0] = CStringGetTextDatum(task->name);
		values[1] = CStringGetTextDatum(RunTaskInSubtransaction(task));
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}

/* ---------- shared-memory slots ---------- */

static WorkerSlot *
ClaimWorkerSlot(const char *dbname)
{
	WorkerSlot *slot = NULL;

	SpinLockAcquire(&worker_shared->mutex);
	for (int i = 0; i < MAX_DATABASES && slot == NULL; i++)
		if (strcmp(worker_shared->slots[i].dbname, dbname) == 0)
			slot = &worker_shared->slots[i];
	for (int i = 0; i < MAX_DATABASES && slot == NULL; i++)
		if (worker_shared->slots[i].dbname[0] == '\0')
			slot = &worker_shared->slots[i];
	if (slot)
	{
		strlcpy(slot->dbname, dbname, NAMEDATALEN);
		slot->pid = MyProcPid;
		slot->started_at = GetCurrentTimestamp();
	}
	SpinLockRelease(&worker_shared->mutex);
	return slot;
}

static void
RecordRound(WorkerSlot *slot, int failed, const char *error)
{
	if (slot == NULL)
		return;
	SpinLockAcquire(&worker_shared->mutex);
	slot->rounds++;
	slot->tasks_failed += failed;
	slot->last_round_at = GetCurrentTimestamp();
	/* the last finished round's error: a round under way never blanks it */
	strlcpy(slot->last_error, error ? error : "", ERROR_TEXT_LEN);
	SpinLockRelease(&worker_shared->mutex);
}

static void
ReleaseWorkerSlot(int code, Datum arg)
{
	WorkerSlot *slot = (WorkerSlot *) DatumGetPointer(arg);

	SpinLockAcquire(&worker_shared->mutex);
	if (slot->pid == MyProcPid)
		slot->pid = 0;
	SpinLockRelease(&worker_shared->mutex);
}

Datum
apicore_maintenance_workers(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	WorkerSlot	copy[MAX_DATABASES];

	ApicoreRequirePreload("apicore.maintenance_workers");
	InitMaterializedSRF(fcinfo, 0);

	SpinLockAcquire(&worker_shared->mutex);
	memcpy(copy, worker_shared->slots, sizeof(copy));
	SpinLockRelease(&worker_shared->mutex);

	for (int i = 0; i < MAX_DATABASES; i++)
	{
		Datum		values[7];
		bool		nulls[7] = {false};

		if (copy[i].dbname[0] == '\0')
			continue;
		values[0] = CStringGetTextDatum(copy[i].dbname);
		values[1] = Int32GetDatum(copy[i].pid);
		nulls[1] = copy[i].pid == 0;
		values[2] = Int64GetDatum(copy[i].rounds);
		values[3] = Int64GetDatum(copy[i].tasks_failed);
		values[4] = TimestampTzGetDatum(copy[i].started_at);
		values[5] = TimestampTzGetDatum(copy[i].last_round_at);
		nulls[5] = copy[i].rounds == 0;
		values[6] = CStringGetTextDatum(copy[i].last_error);
		nulls[6] = copy[i].last_error[0] == '\0';
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}

/* ---------- the database worker ---------- */

/*
 * Run one task in its own transaction.  Returns NULL on success, else the
 * error message (allocated in `cxt`); the error is logged, not rethrown.
 */
static char *
RunTaskInTransaction(MaintenanceTask *task, const char *dbname, MemoryContext cxt)
{
	char	   *volatile failure = NULL;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	pgstat_report_activity(STATE_RUNNING, task->name);
	PG_TRY();
	{
		char	   *detail = CallMaintenanceTask(task);

		elog(DEBUG1, "apicore: %s in %s: %s", task->name, dbname, detail);
		PopActiveSnapshot();
		CommitTransactionCommand();
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		FlushErrorState();
		AbortCurrentTransaction();
		failure = psprintf("%s: %s", task->name, edata->message);
		ereport(LOG,
				(errmsg("apicore: maintenance task %s failed in database \"%s\": %s",
						task->name, dbname, edata->message),
				 errhint("The task runs again in the next round.")));
		FreeErrorData(edata);
	}
	PG_END_TRY();
	pgstat_report_activity(STATE_IDLE, NULL);
	return failure;
}

/* Read the task list, or NIL when the extension is not installed here. */
static List *
ReadTasksIfInstalled(MemoryContext cxt, bool *installed)
{
	List	   *tasks = NIL;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	*installed = OidIsValid(get_extension_oid("apicore", true));
	if (*installed)
		tasks = MaintenanceTaskList(cxt);
	PopActiveSnapshot();
	CommitTransactionCommand();
	return tasks;
}

/* Log a missing extension once, when it goes missing, not every round. */
static bool
NoteExtensionMissing(WorkerSlot *slot, bool missing)
{
	bool		changed;

	SpinLockAcquire(&worker_shared->mutex);
	changed = slot->extension_missing != missing;
	slot->extension_missing = missing;
	SpinLockRelease(&worker_shared->mutex);
	return changed;
}

static void
RunMaintenanceRound(WorkerSlot *slot, const char *dbname, MemoryContext cxt)
{
	bool		installed;
	List	   *tasks = ReadTasksIfInstalled(cxt, &installed);
	ListCell   *lc;
	int			failed = 0;
	char	   *last_failure = NULL;

	if (!installed)
	{
		if (NoteExtensionMissing(slot, true))
			ereport(LOG,
					(errmsg("apicore: database \"%s\" has no apicore extension; maintenance waits for it",
							dbname),
					 errhint("Run CREATE EXTENSION apicore in \"%s\", or remove it from apicore.database.",
							 dbname)));
		RecordRound(slot, 0, "extension apicore is not installed in this database");
		return;
	}
	NoteExtensionMissing(slot, false);

	foreach(lc, tasks)
	{
		char	   *failure = RunTaskInTransaction(lfirst(lc), dbname, cxt);

		if (failure)
		{
			failed++;
			last_failure = failure;
		}
	}
	RecordRound(slot, failed, last_failure ? last_failure : "");
}

/* One round in one database, then exit: the launcher starts the next one. */
void
ApicoreDatabaseWorkerMain(Datum arg)
{
	char		dbname[NAMEDATALEN];
	WorkerSlot *slot;

	strlcpy(dbname, MyBgworkerEntry->bgw_extra, NAMEDATALEN);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();

	slot = ClaimWorkerSlot(dbname);
	if (slot == NULL)
	{
		ereport(LOG,
				(errmsg("apicore: no free maintenance slot for database \"%s\"", dbname)));
		proc_exit(1);
	}
	on_shmem_exit(ReleaseWorkerSlot, PointerGetDatum(slot));

	BackgroundWorkerInitializeConnection(dbname, NULL, 0);
	pgstat_report_appname("apicore maintenance");

	/* Never queue behind application locks for long: give up, retry next round. */
	SetConfigOption("lock_timeout", "1000", PGC_SUSET, PGC_S_OVERRIDE);

	RunMaintenanceRound(slot, dbname, CurrentMemoryContext);
	proc_exit(0);
}

/* ---------- the launcher ---------- */

/* Rounds completed so far in `dbname`, -1 if it never had a slot. */
static int64
RoundsCompleted(const char *dbname)
{
	int64		rounds = -1;

	SpinLockAcquire(&worker_shared->mutex);
	for (int i = 0; i < MAX_DATABASES; i++)
		if (strcmp(worker_shared->slots[i].dbname, dbname) == 0)
			rounds = worker_shared->slots[i].rounds;
	SpinLockRelease(&worker_shared->mutex);
	return rounds;
}

static bool
StartDatabaseWorker(DatabaseWorker *dw)
{
	BackgroundWorker worker;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = BGW_NEVER_RESTART;	/* the launcher restarts it */
	worker.bgw_notify_pid = MyProcPid;
	snprintf(worker.bgw_library_name, BGW_MAXLEN, "apicore");
	snprintf(worker.bgw_function_name, BGW_MAXLEN, "ApicoreDatabaseWorkerMain");
	snprintf(worker.bgw_name, BGW_MAXLEN, "apicore maintenance %s", dw->dbname);
	snprintf(worker.bgw_type, BGW_MAXLEN, "apicore maintenance");
	strlcpy(worker.bgw_extra, dw->dbname, BGW_EXTRALEN);

	dw->rounds_at_start = RoundsCompleted(dw->dbname);
	if (!RegisterDynamicBackgroundWorker(&worker, &dw->handle))
	{
		ereport(LOG,
				(errmsg("apicore: could not start a maintenance worker for database \"%s\"", dw->dbname),
				 errhint("Raise max_worker_processes.")));
		dw->handle = NULL;
		return false;
	}
	return true;
}

/* Parse apicore.database into the launcher's table, keeping running workers. */
static int
SyncDatabaseList(DatabaseWorker *workers, int nworkers)
{
	char	   *copy = pstrdup(apicore_database);
	List	   *names = NIL;
	DatabaseWorker wanted[MAX_DATABASES];
	int			nwanted = 0;
	ListCell   *lc;

	if (!SplitIdentifierString(copy, ',', &names))
		names = NIL;			/* the check hook refuses bad values; be safe */
	foreach(lc, names)
	{
		DatabaseWorker *dw = &wanted[nwanted];

		if (nwanted >= MAX_DATABASES)
			break;
		memset(dw, 0, sizeof(*dw));
		strlcpy(dw->dbname, lfirst(lc), NAMEDATALEN);
		for (int i = 0; i < nworkers; i++)
			if (strcmp(workers[i].dbname, dw->dbname) == 0)
			{
				*dw = workers[i];
				workers[i].handle = NULL;	/* kept */
			}
		nwanted++;
	}
	/* databases dropped from the setting: stop their workers */
	for (int i = 0; i < nworkers; i++)
		if (workers[i].handle)
			TerminateBackgroundWorker(workers[i].handle);
	memcpy(workers, wanted, sizeof(DatabaseWorker) * nwanted);
	return nwanted;
}

/*
 * Notice a round that ended; say so when it ended without completing (the
 * database does not exist, the worker crashed), since nothing else will.
 */
static void
ReapFinishedRound(DatabaseWorker *dw)
{
	pfree(dw->handle);
	dw->handle = NULL;
	if (RoundsCompleted(dw->dbname) == dw->rounds_at_start)
		ereport(LOG,
				(errmsg("apicore: maintenance round in database \"%s\" did not complete; next attempt in %d ms",
						dw->dbname, maintenance_interval_ms),
				 errhint("If the database does not exist, remove it from apicore.database; earlier log lines say why.")));
}

/*
 * Whether the database of `dw` exists, saying so once when that changes.  A
 * worker for a missing database would die FATAL in every round; the
 * launcher, connected to no database, can read the shared catalog
 * pg_database instead, as the autovacuum launcher does.
 */
static bool
DatabaseExists(DatabaseWorker *dw)
{
	bool		exists;

	StartTransactionCommand();
	exists = OidIsValid(get_database_oid(dw->dbname, true));
	CommitTransactionCommand();
	if (!exists && !dw->missing)
		ereport(LOG,
				(errmsg("apicore: database \"%s\" in apicore.database does not exist; looking again every %d ms",
						dw->dbname, maintenance_interval_ms),
				 errhint("Create the database, or remove it from apicore.database.")));
	else if (exists && dw->missing)
		ereport(LOG,
				(errmsg("apicore: database \"%s\" now exists; its maintenance starts", dw->dbname)));
	dw->missing = !exists;
	return exists;
}

/* Start the rounds that are due; returns ms until the next one is. */
static long
StartDueRounds(DatabaseWorker *workers, int nworkers)
{
	TimestampTz now = GetCurrentTimestamp();
	long		wait_ms = maintenance_interval_ms;

	for (int i = 0; i < nworkers; i++)
	{
		DatabaseWorker *dw = &workers[i];
		TimestampTz due;
		pid_t		pid;

		if (dw->handle)
		{
			if (GetBackgroundWorkerPid(dw->handle, &pid) != BGWH_STOPPED)
				continue;		/* never two rounds at once in one database */
			ReapFinishedRound(dw);
		}
		/* computed from the setting now, so a reload applies at once */
		due = TimestampTzPlusMilliseconds(dw->last_start, maintenance_interval_ms);
		if (now >= due)
		{
			if (!DatabaseExists(dw))
				dw->last_start = now;	/* look again in one interval */
			else if (StartDatabaseWorker(dw))
				dw->last_start = now;
		}
		else
			wait_ms = Min(wait_ms, TimestampDifferenceMilliseconds(now, due));
	}
	return Max(wait_ms, 10);
}

void
ApicoreLauncherMain(Datum arg)
{
	DatabaseWorker workers[MAX_DATABASES];
	int			nworkers = 0;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnection(NULL, NULL, 0);

	memset(workers, 0, sizeof(workers));
	nworkers = SyncDatabaseList(workers, 0);
	for (;;)
	{
		long		wait_ms;

		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
			nworkers = SyncDatabaseList(workers, nworkers);
		}
		wait_ms = StartDueRounds(workers, nworkers);
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 wait_ms, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
}
