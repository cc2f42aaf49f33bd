/*
 * cursor.c — placeholder until the cursor capability lands.
 */
#include "postgres.h"

#include "apicore.h"

void
CursorInit(void)
{
}
