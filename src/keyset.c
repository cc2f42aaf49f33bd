/*
 * keyset.c — placeholder until the keyset capability lands.
 */
#include "postgres.h"

#include "apicore.h"

void
KeysetInit(void)
{
}
