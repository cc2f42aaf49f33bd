/*
 * soft_delete.c — placeholder until the soft_delete capability lands.
 */
#include "postgres.h"

#include "apicore.h"

void
SoftDeleteInit(void)
{
}
