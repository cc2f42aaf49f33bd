/*
 * keyset.c — placeholder.
 */
#include "postgres.h"

#include "fmgr.h"

#include "apicore.h"

PG_FUNCTION_INFO_V1(apicore_keyset_page);

void
KeysetInit(void)
{
}

Datum
apicore_keyset_page(PG_FUNCTION_ARGS)
{
	PG_RETURN_NULL();
}
