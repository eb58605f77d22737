# synctasks' batch operations in perl, for hosts that have perl: one process
# for a whole folder's renames, mkdirs or removals, where the shell would
# fork a program per batch. Its code, then the names (NUL-separated,
# relative to the folder the script entered) come on stdin; it is told both
# lengths, so it never reads past them (the script's next operation follows
# on the same stdin). Arguments: the names' length, whether the folder was
# entered (0: read the names, do nothing, fail), and what to do:
#   mv     rename each (staged, final) pair
#   mkdir  make each name (an existing one fails)
#   rm     remove each: rmdir, else rm -rf
use strict;
use warnings;
my ($length, $ok, $what) = @ARGV;
my $names = "";
while (length($names) < $length) {
    last unless sysread(STDIN, $names, $length - length($names), length($names));
}
my @names = split(/\0/, $names);
my $status = $ok ? 0 : 1;
my @rest;
while ($ok && @names) {
    my $name = shift @names;
    if ($what eq "mv") {
        my $final = shift @names;
        if (!rename($name, $final)) { print "$final: $!\n"; $status = 1 }
    } elsif ($what eq "mkdir") {
        if (!mkdir($name)) { print "mkdir: cannot create directory '$name': $!\n"; $status = 1 }
    } elsif (!rmdir($name) && (-e $name || -l $name)) {
        push @rest, $name;
    }
}
while (@rest) {
    system("rm", "-rf", "--", splice(@rest, 0, 500));
    $status = 1 if $?;
}
exit $status;
