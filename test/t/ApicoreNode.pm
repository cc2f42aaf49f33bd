# ApicoreNode: the cluster apicore's TAP tests start from (make tap puts
# test/t on the module path).
package ApicoreNode;
use strict;
use warnings;
use Exporter 'import';
use PostgreSQL::Test::Cluster;

our @EXPORT = qw(apicore_node);

# apicore_node($name, %options): a new PostgreSQL::Test::Cluster, initialised
# and started, with apicore in shared_preload_libraries.  Options:
#   database   apicore.database, what the worker serves (default 'postgres')
#   interval   apicore.maintenance_interval (default '1s')
#   conf       further postgresql.conf lines
#   streaming  true: initialised with allows_streaming, to take a replica from
# restart_after_crash is on (the framework turns it off), and search_path is
# 'public': the superuser is named like the OS user (any name, even apicore),
# so "$user" must not resolve to the extension's schema.
sub apicore_node
{
	my ($name, %opt) = @_;
	my $database = $opt{database} // 'postgres';
	my $interval = $opt{interval} // '1s';
	my $node = PostgreSQL::Test::Cluster->new($name);
	$node->init(allows_streaming => $opt{streaming} ? 1 : 0);
	$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'apicore'
apicore.database = '$database'
apicore.maintenance_interval = '$interval'
restart_after_crash = on
search_path = 'public'
} . ($opt{conf} // ''));
	$node->start;
	return $node;
}

1;
