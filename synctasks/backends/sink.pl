# synctasks' SCP sink in perl, for hosts that have perl: the records and the
# answers of `scp -t` (T, C, D, E; one answer per record), but reading its
# stream in big blocks. It never reads past its stream (the script's next
# operation follows on the same stdin): it is told the stream's exact
# length, or 0: the stream comes in frames, each 8 hex digits of length and
# that many bytes, sent as they are made (no pass over every file to
# measure the stream before its first byte: 0.3 s per 100,000 files).
# Runs in the folder the script entered; names may not leave it.
use strict;
use warnings;
use Fcntl qw(O_WRONLY O_CREAT O_TRUNC O_NOFOLLOW O_EXCL);
my $left = shift @ARGV;
my $framed = !$left;
my $buf = "";
my $hires = eval { require Time::HiRes; 1 };
$| = 1;
umask 0;
# Widen the pipe sshd feeds us from 64 KiB to 1 MiB (F_SETPIPE_SZ, Linux;
# the most an unprivileged user may ask; elsewhere, or past the user's pipe
# quota of 64 MiB, it fails and nothing changes). With 64 KiB, sshd and
# this sink took turns on every 16 small files: 2,000 x 4 KiB took 0.40 s,
# sink and client both mostly waiting; 0.12 s with 1 MiB. The pipe keeps
# its size for the run's later streams.
fcntl(STDIN, 1031, 1048576);

# Answers are kept and written before each read that may wait, and at the
# end: one write per block of the stream, not three per file (they wait in
# a file until the sink exits anyway). The first ("ready") goes out before
# any of the stream is read: the answers' file has its first block on the
# disk before the stream can fill it.
my $said = "";
sub say { $said .= $_[0] }
sub told { syswrite(STDOUT, $said) if length $said; $said = "" }
# the next frame's length (0: the stream ended)
sub frame {
    my $head = "";
    while (length($head) < 8) {
        my $got = sysread(STDIN, $head, 8 - length($head), length($head));
        last unless $got;
    }
    $framed = 0 unless $head =~ /^[0-9a-f]{8}$/ && hex($head) > 0;
    return $framed ? hex($head) : 0;
}
sub fill {
    my ($want) = @_;
    told() if length($buf) < $want;
    while (length($buf) < $want && ($left > 0 || ($framed && ($left = frame()) > 0))) {
        my $got = sysread(STDIN, $buf, $left < 4194304 ? $left : 4194304, length($buf));
        if (!$got) { $left = 0; last }
        $left -= $got;
    }
    return length($buf) >= $want;
}

sub stop {
    my ($why) = @_;
    say("\x01$why\n");
    told();
    exit 1;
}

sub safe {
    my ($name) = @_;
    stop("$name: bad name") if $name eq "" || $name eq "." || $name eq ".." || index($name, "/") >= 0;
    return $name;
}

say("\0");
my ($mtime, $atime) = (0, 0);
my $depth = 0;
while (1) {
    my $nl = index($buf, "\n");
    while ($nl < 0) {
        exit 1 unless fill(length($buf) + 1);
        $nl = index($buf, "\n");
    }
    my $line = substr($buf, 0, $nl + 1, "");
    chop $line;
    my $kind = substr($line, 0, 1, "");
    if ($kind eq "T") {
        my ($s, $us, $as, $aus) = split / /, $line;
        # Half a microsecond more: a double cannot hold every microsecond of
        # today's times, and the kernel truncates to the nanosecond.
        ($mtime, $atime) = ($s + ($us + 0.5) / 1e6, $as + ($aus + 0.5) / 1e6);
        say("\0");
    } elsif ($kind eq "C") {
        my ($mode, $size, $name) = split / /, $line, 3;
        safe($name);
        my $fh;
        # Made here (the usual case, in a staging folder) with its mode
        # (umask 0): no chmod after, but for setuid and setgid bits, which
        # the kernel clears when anyone without CAP_FSETID writes.
        my $fresh = sysopen($fh, $name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, oct $mode);
        $fresh or sysopen($fh, $name, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW, oct $mode) or stop("$name: $!");
        say("\0");
        my $error;
        my $todo = $size;
        while ($todo > 0) {
            fill(1) or stop("$name: the stream ended early");
            my $take = $todo < length($buf) ? $todo : length($buf);
            $todo -= $take;
            # written from the buffer itself (no copy), then dropped from it
            my $off = 0;
            while (!$error && $off < $take) {
                my $wrote = syswrite($fh, $buf, $take - $off, $off);
                if (!defined $wrote) { $error = "$name: $!"; last }
                $off += $wrote;
            }
            substr($buf, 0, $take, "");
        }
        fill(1) or stop("$name: the stream ended early");
        substr($buf, 0, 1, "");  # the source's \0 after the data
        close($fh) or $error //= "$name: $!";
        if (!$fresh || oct($mode) & 06000) { chmod(oct $mode, $name) or $error //= "$name: $!" }
        if ($hires) { Time::HiRes::utime($atime, $mtime, $name) } else { utime($atime, $mtime, $name) }
        say(defined $error ? "\x01$error\n" : "\0");
    } elsif ($kind eq "D") {
        my ($mode, undef, $name) = split / /, $line, 3;
        safe($name);
        # (entered first: the folder mostly exists, and a stat each cost more)
        chdir($name) or (mkdir($name, oct $mode) && chdir($name)) or stop("$name: $!");
        $depth++;
        say("\0");
    } elsif ($kind eq "E") {
        say("\0");
        if ($depth == 0) { told(); exit 0 }
        chdir("..") or stop("..: $!");
        $depth--;
    } else {
        stop("unexpected record");
    }
}
