/*
 * identity.c — the one way apicore runs code as another role.
 *
 * Owns ApicoreBecome/ApicoreRestore and the lookups they are used with
 * (apicore's tables, their owners).  It does what PostgreSQL does before maintaining a user's table
 * (ExecRefreshMatView, vacuum_rel, index_build): switch the current user with
 * SECURITY_RESTRICTED_OPERATION, so nothing the session prepared (temporary
 * objects, SET ROLE, cursors WITH HOLD) can be used as the other role, and
 * set search_path = pg_catalog, pg_temp in a new GUC nest level, so a
 * function or operator the caller created in a schema of their own is never
 * found by name.  SQL run under the switch still qualifies its operators
 * (OPERATOR(pg_catalog.=)): a cross-type comparison such as regclass = oid
 * has no exact match in pg_catalog, and pg_temp is searched for operators too.
 *
 * ApicoreRestore undoes both on the normal path.  On error the (sub)transaction
 * abort does it: it restores the user and security context saved at the
 * (sub)transaction's start and unwinds every GUC nest level above it, which is
 * why callers never catch errors across a switch without a subtransaction
 * (ApicoreTrySubtransaction).
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/namespace.h"
#include "catalog/pg_class.h"
#include "catalog/pg_namespace.h"
#include "miscadmin.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/syscache.h"

#include "apicore.h"

void
ApicoreBecome(ApicoreIdentity *id, Oid role, int extra_sec_context)
{
	GetUserIdAndSecContext(&id->saved_user, &id->saved_sec);
	SetUserIdAndSecContext(role, id->saved_sec | SECURITY_LOCAL_USERID_CHANGE |
						   SECURITY_RESTRICTED_OPERATION | extra_sec_context);
	id->guc_nest = NewGUCNestLevel();
	(void) set_config_option("search_path", "pg_catalog, pg_temp",
							 PGC_USERSET, PGC_S_SESSION, GUC_ACTION_SAVE,
							 true, 0, false);
}

void
ApicoreRestore(ApicoreIdentity *id)
{
	AtEOXact_GUC(false, id->guc_nest);
	SetUserIdAndSecContext(id->saved_user, id->saved_sec);
}

Oid
ApicoreRelationOwner(Oid relid)
{
	HeapTuple	tuple = SearchSysCache1(RELOID, ObjectIdGetDatum(relid));
	Oid			owner;

	if (!HeapTupleIsValid(tuple))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("apicore: relation with OID %u does not exist", relid),
				 errhint("The table was dropped; run the command again.")));
	owner = ((Form_pg_class) GETSTRUCT(tuple))->relowner;
	ReleaseSysCache(tuple);
	return owner;
}

/*
 * The OID of apicore's table `name`, found without search_path; 55000 when
 * it is missing (the extension is not installed, or not updated).
 */
Oid
ApicoreTableOid(const char *name)
{
	Oid			nsp = get_namespace_oid("apicore", true);
	Oid			relid = OidIsValid(nsp) ? get_relname_relid(name, nsp) : InvalidOid;

	if (!OidIsValid(relid))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("apicore: table apicore.%s is missing", name),
				 errhint("Run CREATE EXTENSION apicore (or ALTER EXTENSION apicore UPDATE) in this database.")));
	return relid;
}

/*
 * apicore's owner: the owner of schema apicore, which CREATE EXTENSION gives
 * to the installing role and only a superuser or that role can change.
 */
Oid
ApicoreOwner(void)
{
	Oid			nsp = get_namespace_oid("apicore", true);
	HeapTuple	tuple;
	Oid			owner;

	if (!OidIsValid(nsp))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("apicore: schema apicore is missing"),
				 errhint("Run CREATE EXTENSION apicore in this database.")));
	tuple = SearchSysCache1(NAMESPACEOID, ObjectIdGetDatum(nsp));
	if (!HeapTupleIsValid(tuple))
		elog(ERROR, "apicore: cache lookup failed for schema %u", nsp);
	owner = ((Form_pg_namespace) GETSTRUCT(tuple))->nspowner;
	ReleaseSysCache(tuple);
	return owner;
}
